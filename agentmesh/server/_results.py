"""The server's store of finished calls' replies, for replays and for other holders of a placeholder."""
from __future__ import annotations

import asyncio
import collections
import time

from ..v1 import agent_server_pb2 as pb


class ResultStore:
    """Replies of finished calls, bounded in count and age, and waiters for running ones."""

    def __init__(self, max_results: int, ttl: float) -> None:
        self.max_results = max_results
        self.max_gone = max(100_000, 10 * max_results)   # ids remembered as expired, so fetches fail fast
        self.ttl = ttl
        self._done: collections.OrderedDict[str, tuple[pb.Reply, float]] = collections.OrderedDict()
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self.running: set[str] = set()

    def get(self, call_id: str) -> pb.Reply | None:
        entry = self._done.get(call_id)
        if entry is None:
            return None
        if time.monotonic() - entry[1] > self.ttl:
            self._expire(call_id)
            return None
        return entry[0]

    def finish(self, reply: pb.Reply) -> None:
        """Keep reply and wake whoever waits for it (I/O loop)."""
        call_id = reply.call_id
        self.running.discard(call_id)
        done = self._done
        done[call_id] = (reply, time.monotonic())
        if len(done) > self.max_results:
            self._expire(next(iter(done)))
        waiters = self._waiters.pop(call_id, None)
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(reply)

    def _expire(self, call_id: str) -> None:
        self._done.pop(call_id, None)
        self._gone[call_id] = None
        if len(self._gone) > self.max_gone:
            self._gone.popitem(last=False)

    def sweep(self) -> None:
        """Drop results older than the TTL."""
        now = time.monotonic()
        done = self._done
        while done:
            call_id, (_, t) = next(iter(done.items()))
            if now - t <= self.ttl:
                break
            self._expire(call_id)

    async def wait(self, call_id: str, grace: float) -> pb.Reply | None:
        """The reply, waiting while the call runs or for up to grace s if not yet seen."""
        reply = self.get(call_id)
        if reply is not None:
            return reply
        if call_id in self._gone:
            return None
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(call_id, []).append(fut)
        try:
            if call_id in self.running:
                return await fut
            return await asyncio.wait_for(asyncio.shield(fut), grace)
        except asyncio.TimeoutError:
            if call_id in self.running:
                return await fut
            return None
        finally:
            waiters = self._waiters.get(call_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[call_id]
