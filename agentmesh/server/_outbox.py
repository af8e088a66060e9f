"""One client's session on the server: the replies waiting for it, bounded in bytes by backpressure."""
from __future__ import annotations

import asyncio
import collections

from ..v1 import agent_server_pb2 as pb


def reply_cost(reply: pb.Reply) -> int:
    """The bytes a reply puts in a frame (its byte fields)."""
    return len(reply.payload) + len(reply.state) + len(reply.traceback)


def entry_cost(entry: tuple[pb.Reply, int]) -> int:
    """The cost of an outbox entry, counted once when it was queued."""
    return entry[1]


class Session:
    """One client's session stream: replies to it are queued here and batched into frames.

    backlog counts the reply bytes not yet written. Above budget the session's
    calls stop being read (backpressure: HTTP/2 flow control then holds the
    client back) until half of it is written. Replies are never dropped.
    """

    __slots__ = ("outbox", "wake", "closed", "backlog", "budget", "room")

    def __init__(self, budget: int) -> None:
        self.outbox: collections.deque[tuple[pb.Reply, int]] = collections.deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.backlog = 0
        self.budget = budget
        self.room = asyncio.Event()   # set while the backlog allows reading more calls
        self.room.set()

    def send(self, reply: pb.Reply) -> None:
        """Queue a reply (I/O loop); it always goes out, however full the backlog."""
        if not self.closed:
            cost = reply_cost(reply)
            self.outbox.append((reply, cost))
            self.backlog += cost
            if self.backlog > self.budget:
                self.room.clear()
            self.wake.set()

    def written(self, cost: int) -> None:
        """cost bytes of replies went out: let calls in again once the backlog is down to half the budget."""
        self.backlog -= cost
        if self.backlog <= self.budget // 2:
            self.room.set()
