"""One client's session on the server: the replies waiting for it, bounded in bytes by backpressure."""
from __future__ import annotations

import asyncio
import collections
from typing import Callable, Protocol

from .._frames import kept_bytes
from .._protocol import ANSWERED_BYTES
from ..v1 import agent_server_pb2 as pb


class Outbox(Protocol):
    """Where replies to one client go (its session)."""

    def send(self, reply: pb.Reply) -> None:
        """Queue a reply (I/O loop)."""


def reply_cost(reply: pb.Reply) -> int:
    """The bytes a reply puts in a frame (its byte fields)."""
    return len(reply.payload) + len(reply.state) + len(reply.traceback)


def entry_cost(entry: tuple[pb.Reply, int]) -> int:
    """The cost of an outbox entry, counted once when it was queued."""
    return entry[1]


#: release(agent_id, outbox, reply): send a finished call's reply (held back while a stop is checked)
Release = Callable[[str, "Outbox", pb.Reply], None]


def send_now(agent_id: str, outbox: "Outbox", reply: pb.Reply) -> None:
    """The release of a server with nothing to check: send at once."""
    outbox.send(reply)


def deliver(owner: "ClientSession | None", sessions: list, agent_id: str, reply: pb.Reply,
            owned: pb.Reply | None, release: Release = send_now) -> None:
    """Send a finished call's reply to its callers' sessions (I/O loop). owned is the reply with the agent's
    state: the agent's creator (owner) gets it; when the creator did not make the call, the state goes to it
    as a push and the callers get the plain reply once that push is written."""
    if owned is not None and owner is not None and owner not in sessions and not owner.closed:
        owner.push(agent_id, owned, [(outbox, reply) for outbox in sessions])
        return
    for outbox in sessions:
        release(agent_id, outbox, owned if owned is not None else reply)


def answered(releases: list[tuple["ClientSession", pb.Reply]]) -> list[pb.Reply]:
    """The replies a checkpoint push carries to the creator, newest first within ANSWERED_BYTES: if the
    agent is re-created from that checkpoint, a caller replaying one of these calls gets its reply back
    instead of running it a second time. Copies without seq (a replay answers with the reply as it is)."""
    out: list[pb.Reply] = []
    seen: set[str] = set()
    room = ANSWERED_BYTES
    for _, reply in reversed(releases):
        if reply.call_id in seen or not reply.call_id or reply.stream:   # a stream's items are not kept
            continue
        seen.add(reply.call_id)
        room -= kept_bytes(reply)
        if room < 0:
            break
        kept = pb.Reply()
        kept.CopyFrom(reply)
        kept.seq = 0
        out.append(kept)
    return out


class ClientSession:
    """One client's session stream: replies to it are queued here and batched into frames.

    backlog counts the reply bytes not yet written. Above budget the session's
    calls stop being read (backpressure: HTTP/2 flow control then holds the
    client back) until half of it is written. Replies are never dropped.
    """

    __slots__ = ("release", "outbox", "wake", "closed", "backlog", "budget", "room", "pushes")

    def __init__(self, budget: int, release: Release = send_now) -> None:
        self.release = release   # how replies waiting on a push go out once it is written
        self.outbox: collections.deque[tuple[pb.Reply, int]] = collections.deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.backlog = 0
        self.budget = budget
        self.room = asyncio.Event()   # set while the backlog allows reading more calls
        self.room.set()
        #: agent id -> (its checkpoint push not yet written, the replies to release once it is)
        self.pushes: dict[str, tuple[pb.Reply, list[tuple[ClientSession, pb.Reply]]]] = {}

    def send(self, reply: pb.Reply, cost: int = -1) -> None:
        """Queue a reply (I/O loop); it always goes out, however full the backlog."""
        if not self.closed:
            if cost < 0:
                cost = reply_cost(reply)
            self.outbox.append((reply, cost))
            self.backlog += cost
            if self.backlog > self.budget:
                self.room.clear()
            self.wake.set()

    def push(self, agent_id: str, owned: pb.Reply, releases: list[tuple["ClientSession", pb.Reply]]) -> None:
        """Queue the owner's checkpoint of agent_id after a call someone else made (I/O loop); the replies in
        releases go to their sessions once it is written. A newer push replaces one not yet written (it is
        queued behind the owner's replies that came meanwhile, whose effects it also holds)."""
        old = self.pushes.pop(agent_id, None)
        if old is not None:
            stale, earlier = old
            stale.agent_id, stale.state = "", b""   # written as an empty reply, which clients skip
            del stale.answered[:]
            releases = earlier + releases
        carried = answered(releases)
        pushed = pb.Reply(agent_id=agent_id, seq=owned.seq, state=owned.state, answered=carried)
        self.pushes[agent_id] = (pushed, releases)
        self.send(pushed, len(owned.state) + sum(kept_bytes(reply) for reply in carried))

    def released(self, batch: list[tuple[pb.Reply, int]]) -> None:
        """A batch was written: the replies waiting on checkpoint pushes in it go out (I/O loop)."""
        for reply, _ in batch:
            if reply.agent_id and not reply.call_id:
                entry = self.pushes.get(reply.agent_id)
                if entry is not None and entry[0] is reply:
                    del self.pushes[reply.agent_id]
                    for outbox, waiting in entry[1]:
                        self.release(reply.agent_id, outbox, waiting)

    def close(self) -> None:
        """The session ended: nothing more is written to it; replies waiting on its pushes go out anyway."""
        self.closed = True
        pushes, self.pushes = self.pushes, {}
        for agent_id, (_, releases) in pushes.items():
            for outbox, waiting in releases:
                self.release(agent_id, outbox, waiting)

    def written(self, cost: int) -> None:
        """cost bytes of replies went out: let calls in again once the backlog is down to half the budget."""
        self.backlog -= cost
        if self.backlog <= self.budget // 2:
            self.room.set()
