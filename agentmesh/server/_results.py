"""The server's store of finished calls' replies, for replays and for other holders of a placeholder.

Stored replies never carry a checkpoint (that goes to the caller's session
only), and the store is bounded in count, age and bytes, oldest out first.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import NamedTuple

from .. import _status
from .._frames import kept_bytes
from ..v1 import agent_server_pb2 as pb

log = logging.getLogger("agentmesh.server")

#: why a result is no longer here: the end of the EXPIRED refusal's message
GONE_AGE = "it was kept its full time"
GONE_COUNT = "the store was full (oldest results go first)"
GONE_BYTES = "the store was over its byte budget (oldest results go first)"
GONE_DELETED = "its agent was deleted"


class _Entry(NamedTuple):
    reply: pb.Reply
    stored_at: float
    agent_id: str
    cost: int


class ResultStore:
    """Replies of finished calls, bounded in count, age and bytes, and waiters for running ones."""

    def __init__(self, max_results: int, ttl: float, max_bytes: int) -> None:
        self.max_results = max_results
        self.max_bytes = max_bytes
        self.max_gone = max(100_000, 10 * max_results)   # ids remembered as gone, so fetches fail fast
        self.ttl = ttl
        self.bytes = 0
        self._done: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._by_agent: dict[str, set[str]] = {}
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()   # call id -> why
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self.running: set[str] = set()
        self.fetch_waiters = 0   # FetchResult calls waiting for a result now

    def __len__(self) -> int:
        return len(self._done)

    def get(self, call_id: str) -> pb.Reply | None:
        entry = self._done.get(call_id)
        if entry is None:
            return None
        if time.monotonic() - entry.stored_at > self.ttl:
            self._expire(call_id, GONE_AGE)
            return None
        return entry.reply

    def why_gone(self, call_id: str) -> str:
        """Why call_id's result is not here ("" when it was never seen)."""
        return self._gone.get(call_id, "")

    def finish(self, reply: pb.Reply, agent_id: str, keep: bool = True) -> None:
        """Wake whoever waits for reply (which carries no checkpoint) and keep it unless told not to (I/O loop)."""
        call_id = reply.call_id
        self.running.discard(call_id)
        waiters = self._waiters.pop(call_id, None)
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(reply)
        if not keep:
            self._note_gone(call_id, GONE_DELETED)
            return
        self._expire(call_id, "")     # a call that ran again (its first result was gone) replaces it
        self._gone.pop(call_id, None)
        entry = _Entry(reply, time.monotonic(), agent_id, kept_bytes(reply))
        self._done[call_id] = entry
        self._by_agent.setdefault(agent_id, set()).add(call_id)
        self.bytes += entry.cost
        done = self._done
        while len(done) > self.max_results:
            self._expire(next(iter(done)), GONE_COUNT)
        while self.bytes > self.max_bytes and done:
            self._expire(next(iter(done)), GONE_BYTES)

    def drop_agent(self, agent_id: str) -> int:
        """Forget the results of a deleted agent; returns how many there were."""
        call_ids = self._by_agent.pop(agent_id, set())
        for call_id in call_ids:
            self._expire(call_id, GONE_DELETED)
        return len(call_ids)

    def _expire(self, call_id: str, why: str) -> None:
        """Drop call_id's result; remember why (unless why is "")."""
        entry = self._done.pop(call_id, None)
        if entry is not None:
            self.bytes -= entry.cost
            ids = self._by_agent.get(entry.agent_id)
            if ids is not None:
                ids.discard(call_id)
                if not ids:
                    del self._by_agent[entry.agent_id]
        if why:
            self._note_gone(call_id, why)

    def _note_gone(self, call_id: str, why: str) -> None:
        self._gone[call_id] = why
        if len(self._gone) > self.max_gone:
            self._gone.popitem(last=False)

    def sweep(self) -> None:
        """Drop results older than the TTL."""
        now = time.monotonic()
        done = self._done
        while done:
            call_id, entry = next(iter(done.items()))
            if now - entry.stored_at <= self.ttl:
                break
            self._expire(call_id, GONE_AGE)

    def waits_for(self, call_id: str) -> bool:
        """True when a wait for call_id would wait (its result is neither here nor known to be gone)."""
        return self.get(call_id) is None and call_id not in self._gone

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

    async def fetch(self, call_id: str, server_id: str, max_waiters: int) -> pb.Reply:
        """The reply of call_id for a holder of its placeholder, waiting while it runs; at most max_waiters
        wait at once (more are refused as OVERLOADED, not queued); EXPIRED when it is not known here."""
        if not self.waits_for(call_id):
            reply = self.get(call_id)
        elif self.fetch_waiters >= max_waiters:
            log.debug("server %s refused a fetch of %s: %d fetches wait", server_id, call_id, self.fetch_waiters)
            return _status.refusal(call_id, pb.OVERLOADED, f"server {server_id} already has {self.fetch_waiters} "
                                                           f"result fetches waiting, its limit (max_fetch_waiters); "
                                                           f"fetch call {call_id} again later")
        else:
            self.fetch_waiters += 1
            try:
                reply = await self.wait(call_id, grace=30.0)
            finally:
                self.fetch_waiters -= 1
        if reply is None:
            why = self.why_gone(call_id) or "it was never seen here"
            return _status.refusal(call_id, pb.EXPIRED, f"the result of call {call_id} is unknown or has expired on "
                                                        f"server {server_id}: {why} (results are kept {self.ttl:g} "
                                                        f"s, at most {self.max_results} of them and "
                                                        f"{self.max_bytes} bytes)")
        return reply
