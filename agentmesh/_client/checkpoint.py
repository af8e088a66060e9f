"""The creator's copy of an agent's checkpoint: what failover re-creates the agent from."""
from __future__ import annotations

import collections
import threading
from typing import Iterable

from .._frames import kept_bytes
from .._protocol import ANSWERED_BYTES
from ..v1 import agent_server_pb2 as pb


class Checkpoint:
    """An agent's state after its last completed call (seq calls in), whoever made it, and the replies of
    recent calls from others whose effects that state holds.

    Written on the I/O loop as replies and pushes arrive, read by a failover
    thread: (seq, state) change together, and the replies are kept newest
    first within ANSWERED_BYTES, so that a caller which never got its reply
    and replays the call where the agent moved is answered instead of running
    it twice.
    """

    __slots__ = ("last", "_answered", "_bytes", "_lock")

    def __init__(self) -> None:
        self.last: tuple[int, bytes] = (0, b"")
        self._answered: collections.OrderedDict[str, pb.Reply] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def seq(self) -> int:
        """Calls the agent had completed when the state was taken."""
        return self.last[0]

    @property
    def state(self) -> bytes:
        """The agent's state (empty before the first checkpoint, or with checkpoints off)."""
        return self.last[1]

    def advance(self, seq: int, state: bytes, answered: Iterable[pb.Reply] = ()) -> None:
        """Take (seq, state) if it is newer, and keep the replies it came with."""
        if seq > self.last[0]:
            self.last = (seq, state)
        for reply in answered:
            self._keep(reply)

    def _keep(self, reply: pb.Reply) -> None:
        cost = kept_bytes(reply)
        with self._lock:
            old = self._answered.pop(reply.call_id, None)
            if old is not None:
                self._bytes -= kept_bytes(old)
            self._answered[reply.call_id] = reply
            self._bytes += cost
            while self._bytes > ANSWERED_BYTES and self._answered:
                self._bytes -= kept_bytes(self._answered.popitem(last=False)[1])

    def answered(self) -> list[pb.Reply]:
        """The kept replies, oldest first (a copy: safe to read on any thread)."""
        with self._lock:
            return list(self._answered.values())
