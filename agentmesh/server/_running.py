"""Running the calls of a server's agents: in each agent's order on worker threads, coroutine methods on the
agent loop (``_coroutines``); finished calls go back to the I/O loop in batches."""
from __future__ import annotations

import asyncio
import collections
from typing import Callable

from .. import _status
from .._runtime import Runtime
from ..v1 import agent_server_pb2 as pb
from ._coroutines import AgentLoop
from ._durable import Durable
from ._host import AgentHost, Work
from ._streams import Streams
from ._telemetry import serving
from ._workers import Workers

#: a finished call: (agent, call, reply to store, the caller's copy with the checkpoint or None)
Done = tuple[AgentHost, Work, pb.Reply, "pb.Reply | None"]


class Runner:
    """Runs the calls the mailboxes make ready; answered gets the finished ones on the I/O loop, in batches."""

    def __init__(self, runtime: Runtime, max_message_size: int, executor: Workers, streams: Streams,
                 answered: Callable[[collections.deque[Done]], None]) -> None:
        self.runtime = runtime
        self.max_message_size = max_message_size
        self.executor = executor
        self.streams = streams
        self._answered = answered
        self.coroutines = AgentLoop(self._execute, self._execute_async, self._complete, executor)
        self.loop: asyncio.AbstractEventLoop | None = None   # the I/O loop, bound at start
        self._done: collections.deque[Done] = collections.deque()
        self._done_scheduled = False
        #: the server's state store (durable agents), and how a copy the store refused is dropped (I/O loop)
        self.durable: Durable | None = None
        self.drop_stale: Callable[[AgentHost], None] = lambda host: None

    def run(self, host: AgentHost) -> None:
        """Work through an agent's ready calls (worker thread)."""
        while True:
            work = host.next_ready()
            if work is None:
                return
            self._complete(host, work, None if work.replay is not None or work.cancelled
                           else self._execute(host, work))

    def run_one(self, job: tuple[AgentHost, Work]) -> None:
        """Run one interleaving call (worker thread): no checkpoint, it does not count as a state change."""
        host, work = job
        self._complete(host, work, self._execute(host, work))

    def _complete(self, host: AgentHost, work: Work, reply: pb.Reply | None) -> None:
        """Answer a call that ran (reply), or one replayed or cancelled before it started (None); any thread."""
        if work.replay is not None:
            self._finished(host, work, work.replay, host.replayed(work.replay))
        elif reply is None:
            work.interleaved = True         # it did not run: no state change to count
            self._finished(host, work, _status.refusal(work.call.call_id, pb.UNAVAILABLE, (
                f"{work.call.method}() on agent {host.agent_id} was cancelled by its caller before it started"),
                "CancelledError"), None)
        else:
            owned = host.checkpointed(reply) if host.checkpoints_on and not work.interleaved else None
            if host.stored is not None and not work.interleaved and self.durable is not None:
                self._commit_first(host, work, reply, owned)
            else:
                self._finished(host, work, reply, owned)

    def _commit_first(self, host: AgentHost, work: Work, reply: pb.Reply, owned: pb.Reply | None) -> None:
        """A durable agent's call: its reply goes once its state is committed (worker thread; see _durable)."""
        durable = self.durable
        call_id = work.call.call_id

        def release(ok: bool | None) -> None:
            if ok:
                self._finished(host, work, reply, owned)
            elif ok is False:     # a newer activation owns the row (or it was deleted): this copy goes
                self._finished(host, work, _status.refusal(call_id, pb.STALE_EPOCH, (
                    f"agent {host.agent_id} on server {durable.server_id}: its state store refused this copy's "
                    f"commit (a newer activation exists, or it was deleted); the copy is dropped")), None)
                self.loop.call_soon_threadsafe(self.drop_stale, host)  # type: ignore[union-attr]
            else:
                self._finished(host, work, _status.refusal(call_id, pb.ERROR, (
                    f"{work.call.method}() on agent {host.agent_id} ran, but state store {durable.store.url} did "
                    f"not take its state within {durable.commit_wait:g} s; it is committed when the store answers "
                    f"again"), "StoreUnavailableError"), None)

        instead = durable.commit(host, call_id, owned, release)
        if instead is not None:
            self._finished(host, work, instead, None)

    def _execute(self, host: AgentHost, work: Work) -> pb.Reply:
        """Run the call (worker thread), inside a server span when the caller traces and so does this process."""
        tracing = self.runtime.tracing
        if tracing is None or not work.call.trace:     # the usual call: no context manager on the hot path
            return host.execute(work, self.max_message_size, self.coroutines.await_here, self.streams)
        with serving(tracing, host, work) as done:
            done.append(host.execute(work, self.max_message_size, self.coroutines.await_here, self.streams))
        return done[0]

    async def _execute_async(self, host: AgentHost, work: Work) -> pb.Reply:
        """Run a coroutine call on the agent loop, traced as _execute is."""
        with serving(self.runtime.tracing, host, work) as done:
            done.append(await host.execute_async(work, self.max_message_size, self.streams, self.executor))
        return done[0]

    def _finished(self, host: AgentHost, work: Work, reply: pb.Reply, owned: pb.Reply | None) -> None:
        """Hand a finished call to the I/O loop, which answers and counts it in batches (worker thread)."""
        self._done.append((host, work, reply, owned))
        if not self._done_scheduled:
            self._done_scheduled = True
            self.loop.call_soon_threadsafe(self._drain)  # type: ignore[union-attr]

    def _drain(self) -> None:
        self._done_scheduled = False
        self._answered(self._done)
