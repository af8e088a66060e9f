"""The agents of one server: mailboxes, routing calls to them, answering finished calls, fencing.

Everything here runs on the runtime's I/O loop. Creation is ``_creator``'s,
running the calls ``_running``'s (worker threads, and the agent loop of async
agents). The gRPC service in ``_service.py`` hands calls in and sends replies out.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Callable, Protocol

from .. import _checkpoint, _metrics, _status
from .._class_cache import interleaves
from .._config import ServerConfig
from .._placeholder import loads_collecting, resolve
from .._runtime import Runtime
from ..v1 import agent_server_pb2 as pb
from ._classes import HostedClasses
from ._creator import Creator, Refusal
from ._durable import Durable
from ._fencing import Fencing
from ._host import AgentHost, Work
from ._outbox import Outbox, deliver
from ._results import ResultStore
from ._running import Done, Runner
from ._streams import Streams
from ._telemetry import count_answer
from ._workers import Workers

log = logging.getLogger("agentmesh.server")


class Listener(Protocol):
    """Who hears of hosted agents coming and going and of load changes (the registration)."""

    def agent_added(self, agent_id: str, name: str, cls_name: str) -> None: ...

    def agent_removed(self, agent_id: str) -> None: ...

    def load_changed(self) -> None: ...


class Hosting:
    """The agents a server hosts and the machinery that runs their calls."""

    def __init__(self, config: ServerConfig, runtime: Runtime, classes: HostedClasses) -> None:
        self.server_id = config.server_id
        self.epoch = time.time_ns()
        self.runtime = runtime
        self.classes = classes
        self.max_message_size = config.max_message_size
        self.max_pending_calls = config.max_pending_calls
        self.agents: dict[str, AgentHost] = {}
        self.results = ResultStore(config.max_results, config.result_ttl, config.max_result_bytes)
        self.inflight = 0
        self.draining = False
        self.listener: Listener | None = None
        self.executor = Workers(config.max_workers, "agentmesh-agent")
        self.streams = Streams(config.result_ttl, self._send_early)
        self.runner = Runner(runtime, config.max_message_size, self.executor, self.streams, self._answered)
        self.coroutines = self.runner.coroutines
        self.creator = Creator(server_id=self.server_id, capacity=config.capacity, agents=self.agents, classes=classes,
                               results=self.results, executor=self.executor, ready=self._ready,
                               abandon=self._abandon, release_together=self.release_together,
                               added=self._added, restored=self._restored)
        self.releasing: list[AgentHost] | None = None   # see release_together
        self.metrics: Any = None   # this process's metrics while they are on
        #: agents dropped because their callers moved them, and what waits while a stop is checked
        self.fencing = Fencing(self.server_id)
        self.moved_away = self.fencing.moved_away
        self.release = self.fencing.release
        #: asks whether this process was just stopped (set by the service); a stop holds calls and replies
        self.check_pause: Callable[[], None] = lambda: None
        self.loop: asyncio.AbstractEventLoop | None = None   # the I/O loop, bound at start
        self.durable: Durable | None = None   # the state store of durable agents (use_store)

    def use_store(self, durable: Durable) -> None:
        """Host durable agents: activated from durable's store, their state committed before their replies; a copy
        whose commit the store refuses (a newer activation exists elsewhere) is dropped (on the I/O loop)."""
        self.durable = self.creator.durable = self.runner.durable = durable
        self.runner.drop_stale = lambda host: self.fence("its state store holds a newer activation of it", [
            host.agent_id]) if self.agents.get(host.agent_id) is host else None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = self.streams.io = self.runner.loop = self.creator.loop = loop

    async def create(self, request: pb.CreateAgentRequest) -> pb.CreateAgentResponse:
        """Create an agent (CreateAgent), its constructor run on a worker thread; raises Refusal."""
        begun = self.creator.begin(request, self.epoch, self.draining)
        if isinstance(begun, pb.CreateAgentResponse):
            return begun
        return await self.creator.finish(begun, request)

    def _added(self, host: AgentHost) -> None:
        if self.listener is not None:
            self.listener.agent_added(host.agent_id, host.name, host.cls_name)

    def _restored(self) -> None:
        if self.metrics is not None:
            self.metrics.restored += 1

    def _send_early(self, work: Work, reply: pb.Reply) -> None:
        """Answer a call before it ends (a stream starts), from any thread."""
        def send() -> None:
            for outbox in work.sessions:
                outbox.send(reply)

        self.loop.call_soon_threadsafe(send)  # type: ignore[union-attr]

    # -- fencing -------------------------------------------------------------
    def fence(self, why: str, agent_ids: list[str]) -> int:
        """Drop the agents whose callers moved them elsewhere, and only those (I/O loop); how many were here.

        The others keep their state and their epoch. Calls for a dropped agent
        are refused as STALE_EPOCH with why, so their proxies look for its new
        home; a copy created here later gets the server's new epoch, which
        calls aimed at the old one do not match.
        """
        dropped = [agent_id for agent_id in agent_ids if self.agents.pop(agent_id, None) is not None]
        if not dropped:
            return 0
        self.epoch = max(time.time_ns(), self.epoch + 1)
        self.fencing.moved(dropped, why)
        log.warning("agent server %s dropped %d agent(s) that moved elsewhere (%s); new epoch %d",
                    self.server_id, len(dropped), why, self.epoch)
        return len(dropped)

    def hold_calls(self) -> None:
        """Keep calls, and replies, back until release_calls() (any thread): local state is being checked."""
        self.fencing.hold()

    def release_calls(self) -> None:
        """The check is over: the replies and calls held back go on (I/O loop; see Fencing.end)."""
        self.fencing.end(self.agents.__contains__, self.dispatch)

    def delete(self, agent_id: str) -> bool:
        """Drop an agent and the results of its calls (those still running are not kept either)."""
        host = self.agents.pop(agent_id, None)
        if host is None:
            return False
        host.deleted = True
        dropped = self.results.drop_agent(agent_id)
        log.debug("deleted agent %s and %d stored result(s) of it", agent_id, dropped)
        if self.listener is not None:
            self.listener.agent_removed(agent_id)
        return True

    async def state_of(self, host: AgentHost) -> bytes:
        """The agent's checkpoint, taken on a worker thread."""
        loop = self.loop
        assert loop is not None
        return await loop.run_in_executor(self.executor, _checkpoint.checkpoint_of, host.agent)

    # -- the call path ---------------------------------------------------------
    @staticmethod
    def _answer(outbox: Outbox | None, reply: pb.Reply) -> None:
        if outbox is not None:
            outbox.send(reply)

    def dispatch(self, call: pb.Call, outbox: Outbox | None) -> None:
        """Route one call to its agent's mailbox (I/O loop)."""
        if call.method == "__create__":
            self.creator.from_session(call, outbox, self.epoch, self.draining)
            return
        done = self.results.get(call.call_id)
        if done is not None:                       # a replay of a finished call: answer from its result
            self._answer_replay(call, done, outbox)
            return
        held = self.fencing.calls
        if held is not None:
            held.append((call, outbox))
            return
        call_id = call.call_id
        host = self.agents.get(call.agent_id)
        if host is not None and call.epoch and call.epoch != host.epoch:
            self._refused(outbox, call, pb.STALE_EPOCH, f"agent {call.agent_id} on server {self.server_id} "
                          f"is at epoch {host.epoch}, the call expected {call.epoch}: this is another copy")
            return
        if host is None:
            moved = self.moved_away.get(call.agent_id)
            failed = self.creator.refused.get(call.agent_id) if moved is None else None
            if moved is not None:
                self._refused(outbox, call, pb.STALE_EPOCH, f"agent {call.agent_id} is no longer on server "
                              f"{self.server_id}: it was dropped when {moved}")
            elif failed is not None:
                self._refused(outbox, call, failed[0], failed[1])
            else:
                self._refused(outbox, call, pb.UNKNOWN_AGENT, f"no agent {call.agent_id} on server "
                              f"{self.server_id} (deleted, or never created here)")
            return
        if call_id in self.results.running:   # a replay of a running call: wait for the same result
            asyncio.ensure_future(self._answer_later(call, outbox))
            return
        if host.queued >= self.max_pending_calls:
            self._refused(outbox, call, pb.OVERLOADED, f"agent {call.agent_id} has {host.queued} "
                          f"calls pending (limit {self.max_pending_calls})")
            return
        payload = call.payload   # each read of the field is a copy: read once
        if len(payload) > self.max_message_size:
            self._refused(outbox, call, pb.TOO_LARGE, f"arguments of {call.method}() are {len(payload)} bytes, "
                          f"over the limit of {self.max_message_size} bytes")
            return
        if call.method.startswith("_") and call.method not in ("__call__", "__getattr__"):
            self._refused(outbox, call, pb.UNKNOWN_METHOD, f"{call.method} is private to "
                          f"{host.cls_name}; only public methods can be called")
            return
        try:
            (args, kwargs), placeholders = (loads_collecting(payload, self.runtime) if payload
                                            else (((), {}), []))
        except Exception as exc:  # noqa: BLE001 - anything a bad pickle raises
            self._refused(outbox, call, pb.BAD_PAYLOAD, f"arguments of {call.method}() on agent "
                          f"{call.agent_id} do not unpickle: {type(exc).__name__}: {exc}",
                          type(exc).__name__)
            return
        work = Work(call, args, kwargs, placeholders, outbox)
        if self.metrics is not None:
            work.received = _metrics.now()
        host.queued += 1
        self.inflight += 1
        self.results.running.add(call_id)
        if not placeholders and host.agent is not None and interleaves(type(host.agent), call.method):
            work.interleaved = True            # runs now, beside the agent's other calls
            if self.coroutines.runs(host):
                self.coroutines.start_one(host, work)
            else:
                self.executor.run(self.runner.run_one, (host, work))
            return
        self._enqueue(host, work)

    def _refused(self, outbox: Outbox | None, call: pb.Call, status: int, message: str, error_type: str = "") -> None:
        """Answer a call with a refusal made here (not run); counted under method "other"."""
        self._answer(outbox, _status.refusal(call.call_id, status, message, error_type))
        if self.metrics is not None:
            host = self.agents.get(call.agent_id)
            self.metrics.answered(host.cls_name if host else "", "other", _status.name(status), None)

    async def _answer_later(self, call: pb.Call, outbox: Outbox | None) -> None:
        reply = await self.results.wait(call.call_id, grace=0)
        if reply is not None:
            self._answer_replay(call, reply, outbox)

    def _answer_replay(self, call: pb.Call, reply: pb.Reply, outbox: Outbox | None) -> None:
        """Send a finished call's stored reply again; with checkpoints on, through the agent's mailbox,
        so it leaves with the state it left the agent in (I/O loop)."""
        host = self.agents.get(call.agent_id)
        if outbox is None or host is None or not host.checkpoints_on or not reply.seq:
            self._answer(outbox, reply)
            return
        self._enqueue(host, Work(call, (), {}, [], outbox, replay=reply))

    def _enqueue(self, host: AgentHost, work: Work) -> None:
        """Into the agent's mailbox, in order: held back while placeholders resolve or the agent is built.

        A notification without placeholders (a msghub broadcast) goes past calls
        still waiting for their arguments: it was sent before any of them could
        start, so it is heard before they run, as their senders saw it.
        """
        if work.call.notify and not work.placeholders and host.agent is not None:
            self._ready(host, work)
        elif work.placeholders or host.waiting or host.agent is None:
            host.hold(work)
            # a call held only while its agent is built needs no pump: built() releases it (no task per agent)
            if host.pump is None and (work.placeholders or host.agent is not None):
                host.pump = asyncio.ensure_future(self._pump(host))
        else:
            self._ready(host, work)

    async def _pump(self, host: AgentHost) -> None:
        """Resolve the placeholders of waiting calls without holding a thread, in order."""
        try:
            if host.constructed is not None and not host.constructed.done():
                try:
                    await asyncio.shield(host.constructed)
                except Refusal as refusal:
                    while host.waiting:
                        self._abandon(host, host.waiting.popleft(), refusal.status, refusal.message)
                    return
            while host.waiting:
                work = host.waiting[0]
                for placeholder in work.placeholders:
                    await resolve(placeholder, work.call.trace)
                host.waiting.popleft()
                self._ready(host, work)
            host.waiting = None
        finally:
            host.pump = None

    def _abandon(self, host: AgentHost, work: Work, status: int, message: str) -> None:
        """Answer an accepted call with an error without running it (I/O loop)."""
        if work.replay is not None:
            self._answer(work.sessions[0], work.replay)
            return
        host.queued -= 1
        self.inflight -= 1
        self.results.running.discard(work.call.call_id)
        for outbox in work.sessions:
            outbox.send(_status.refusal(work.call.call_id, status, message, "AgentCreationError"))

    def _ready(self, host: AgentHost, work: Work) -> None:
        if host.push_ready(work):
            if self.coroutines.runs(host):
                self.coroutines.start(host)
            elif self.releasing is not None:
                self.releasing.append(host)
            else:
                self.executor.run(self.runner.run, host)

    def release_together(self, fn: Callable[[], None]) -> None:
        """Run fn (I/O loop); the agents it makes ready start together on a few threads, not one wake-up each."""
        self.releasing = []
        try:
            fn()
        finally:
            hosts, self.releasing = self.releasing, None
            if hosts:
                self.executor.run_many(self.runner.run, hosts)

    def cancel(self, cancel: pb.Cancel) -> None:
        """The caller gave up on a call (I/O loop): not started, it is answered without running; a coroutine
        call running is cancelled; a plain one that runs finishes (Python cannot stop a thread)."""
        host = self.agents.get(cancel.agent_id)
        work = host.find(cancel.call_id) if host is not None else None
        if work is not None:
            work.cancelled = True
        else:
            self.coroutines.cancel(cancel.call_id)

    def _answered(self, queue: collections.deque[Done]) -> None:
        """Hand finished replies to their sessions and the result store (I/O loop)."""
        self.check_pause()   # a stop that just ended holds these back until it is checked
        results = self.results
        metrics = self.metrics
        while queue:
            host, work, reply, owned = queue.popleft()
            if work.replay is not None:     # sent again, not run again: nothing to count or store
                deliver(None, work.sessions, host.agent_id, reply, owned, self.release)
                continue
            host.queued -= 1
            if not work.interleaved:
                host.seq += 1
            self.inflight -= 1
            results.finish(reply, host.agent_id, keep=not host.deleted)
            deliver(host.owner, work.sessions, host.agent_id, reply, owned, self.release)
            if metrics is not None:
                count_answer(metrics, host, work, reply, owned)
        if self.listener is not None:
            self.listener.load_changed()
