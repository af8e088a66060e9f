"""What a server keeps while it fences: the agents moved away from it, and the calls and replies held back
while a stop is checked (a stopped server's agents may have been re-created elsewhere meanwhile)."""
from __future__ import annotations

import collections
from typing import Callable

from .. import _status
from ..v1 import agent_server_pb2 as pb
from ._outbox import Outbox

#: how many dropped agents' ids a server remembers, to refuse their calls as moved
MAX_MOVED_AWAY = 100_000


class Fencing:
    """The agents dropped as moved (agent_id -> why), and what waits while a stop is checked (I/O loop)."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.moved_away: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.calls: list[tuple[pb.Call, Outbox | None]] | None = None       # held while a stop is checked
        self.replies: list[tuple[str, Outbox, pb.Reply]] | None = None      # the same, for finished calls

    def moved(self, agent_ids: list[str], why: str) -> None:
        """Remember agent_ids as moved away for why (the latest MAX_MOVED_AWAY)."""
        for agent_id in agent_ids:
            self.moved_away[agent_id] = why
        while len(self.moved_away) > MAX_MOVED_AWAY:
            self.moved_away.popitem(last=False)

    def hold(self) -> None:
        """Hold calls and replies back until end() (any thread): local state is being checked."""
        if self.calls is None:
            self.calls = []
        if self.replies is None:
            self.replies = []

    def release(self, agent_id: str, outbox: Outbox, reply: pb.Reply) -> None:
        """Send a finished call's reply, unless a stop is being checked: then it waits for end()."""
        if self.replies is not None:
            self.replies.append((agent_id, outbox, reply))
        else:
            outbox.send(reply)

    def end(self, hosted: Callable[[str], bool], dispatch: Callable[[pb.Call, Outbox | None], None]) -> None:
        """The check is over: send the replies held back and dispatch the calls, in the order they came.

        A reply of an agent dropped meanwhile (its creator moved it while this
        server was stopped, from a checkpoint that may lack that call) is refused
        as STALE_EPOCH instead, so its caller replays the call where it lives now.
        """
        calls, self.calls = self.calls or [], None
        replies, self.replies = self.replies or [], None
        for agent_id, outbox, reply in replies:
            moved = None if hosted(agent_id) else self.moved_away.get(agent_id)
            outbox.send(reply if moved is None else _status.refusal(
                reply.call_id, pb.STALE_EPOCH, f"agent {agent_id} is no longer on server {self.server_id}: it "
                f"was dropped when {moved}; the call runs again where it lives now"))
        for call, outbox in calls:
            dispatch(call, outbox)
