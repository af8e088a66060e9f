"""The agents of one server: creation, mailboxes, running calls in order on worker threads, fencing.

Everything here runs on the runtime's I/O loop except ``_run`` (worker threads).
The gRPC service in ``_service.py`` hands calls in and sends replies out.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import traceback
from typing import Any, Protocol

import grpc

from .. import _checkpoint, _codec, _status
from .._classes import interleaves
from .._result import loads_collecting
from .._runtime import Runtime
from ..v1 import agent_server_pb2 as pb
from ._classes import ClassNotSent, HostedClasses
from ._building import Builds
from ._host import AgentHost, Work, construct
from ._results import ResultStore
from ._workers import Workers

log = logging.getLogger("agentmesh.server")


class Outbox(Protocol):
    """Where replies to one client go (its session)."""

    def send(self, reply: pb.Reply) -> None:
        """Queue a reply (I/O loop)."""


class Listener(Protocol):
    """Who hears of hosted agents coming and going and of load changes (the registration)."""

    def agent_added(self, agent_id: str, name: str, cls_name: str) -> None: ...

    def agent_removed(self, agent_id: str) -> None: ...

    def load_changed(self) -> None: ...


class Refusal(Exception):
    """Why an agent was not created: a reply status (its gRPC code comes from the status table)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    @property
    def code(self) -> grpc.StatusCode:
        return _status.TABLE[self.status].code


class Hosting:
    """The agents a server hosts and the machinery that runs their calls."""

    def __init__(self, *, server_id: str, runtime: Runtime, capacity: int, classes: HostedClasses,
                 max_message_size: int, max_pending_calls: int, max_results: int, result_ttl: float,
                 max_result_bytes: int, max_workers: int) -> None:
        self.server_id = server_id
        self.epoch = time.time_ns()
        self.runtime = runtime
        self.capacity = capacity
        self.classes = classes
        self.max_message_size = max_message_size
        self.max_pending_calls = max_pending_calls
        self.agents: dict[str, AgentHost] = {}
        self.results = ResultStore(max_results, result_ttl, max_result_bytes)
        self.inflight = 0
        self.draining = False
        self.listener: Listener | None = None
        self.executor = Workers(max_workers, "agentmesh-agent")
        self._failed: collections.OrderedDict[str, tuple[int, str]] = collections.OrderedDict()
        #: (agent, call, reply to store, the caller's copy with the checkpoint or None)
        self._done_queue: collections.deque[tuple[AgentHost, Work, pb.Reply, pb.Reply | None]] = collections.deque()
        self._done_scheduled = False
        #: creations sent on sessions, built by workers in chunks
        self.builds = Builds(self)
        self.loop: asyncio.AbstractEventLoop | None = None   # the I/O loop, bound at start

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    # -- fencing -------------------------------------------------------------
    def fence(self, why: str, agent_ids: list[str] | None = None) -> None:
        """Drop agents that have moved (all, by default) and take a new epoch (I/O loop).

        Calls carry the epoch they expect, so calls aimed at the old copies are refused
        (STALE_EPOCH) and their proxies look for the agents' new home.
        """
        ids = list(self.agents) if agent_ids is None else agent_ids
        for agent_id in ids:
            self.agents.pop(agent_id, None)
        self.epoch = time.time_ns()
        log.warning("agent server %s fenced: %s; dropped %d agent(s), new epoch %d",
                    self.server_id, why, len(ids), self.epoch)

    # -- creation ------------------------------------------------------------
    def begin_create(self, request: pb.CreateAgentRequest) -> AgentHost | pb.CreateAgentResponse:
        """Check a creation and register the agent as under construction; raises Refusal.

        Calls that arrive for it meanwhile wait in its mailbox.
        """
        agent_id = request.agent_id
        if self.draining:
            raise Refusal(pb.UNAVAILABLE, f"agent server {self.server_id} is draining")
        existing = self.agents.get(agent_id)
        if existing is not None:
            return self.created(existing, existed=True)
        if not agent_id:
            raise Refusal(pb.BAD_PAYLOAD, "agent_id is empty")
        if len(self.agents) >= self.capacity:
            raise self._refuse(agent_id, pb.CAPACITY, f"agent server {self.server_id} is full: "
                                                     f"capacity {self.capacity} agents")
        name = request.cls.name
        try:
            cls = self.classes.resolve(request.cls)
        except ClassNotSent as exc:   # calls sent behind it get the same answer, so the client replays them
            raise self._refuse(agent_id, pb.CLASS_NOT_SENT, f"class {name}: {exc}") from None
        except LookupError as exc:
            raise self._refuse(agent_id, pb.CLASS_NOT_FOUND, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a class that cannot be loaded here
            raise self._refuse(agent_id, pb.CLASS_NOT_FOUND, f"class {name} cannot be loaded on this server: "
                                                            f"{type(exc).__name__}: {exc}") from None
        try:
            args, kwargs = _codec.loads(request.init_args) if request.init_args else ((), {})
        except Exception as exc:  # noqa: BLE001
            raise self._refuse(agent_id, pb.BAD_PAYLOAD, f"constructor arguments of {name} do not unpickle: "
                                                        f"{type(exc).__name__}: {exc}") from None
        checkpoint = request.checkpoint and getattr(cls, "checkpoint", True) is not False
        host = AgentHost(agent_id, None, name, getattr(cls, "max_concurrency", 1) or 1,
                         checkpoint=checkpoint, seq=request.state_seq)
        host.constructed = self.loop.create_future()  # type: ignore[union-attr]
        host.build = (cls, args, kwargs)
        self.agents[agent_id] = host
        return host

    async def finish_create(self, host: AgentHost, request: pb.CreateAgentRequest) -> pb.CreateAgentResponse:
        """Run the constructor in a worker thread; release the calls waiting for it."""
        cls, args, kwargs = host.build  # type: ignore[misc]
        host.build = None
        try:
            agent = await self.loop.run_in_executor(  # type: ignore[union-attr]
                self.executor, construct, cls, host.agent_id, args, kwargs, request.state)
        except Exception as exc:  # noqa: BLE001 - the constructor raised
            raise self.not_built(host, exc, traceback.format_exc()) from None
        return self.built(host, agent)

    def built(self, host: AgentHost, agent: Any) -> pb.CreateAgentResponse:
        """The constructor returned: the agent serves, and the calls waiting for it go on (I/O loop)."""
        host.agent = agent
        host.constructed.set_result(None)  # type: ignore[union-attr]
        host.constructed = None   # a pump already waiting holds it; nobody else needs it
        self._failed.pop(host.agent_id, None)   # an earlier refusal (class not sent) no longer answers its calls
        if self.listener is not None:
            self.listener.agent_added(host.agent_id, host.name, host.cls_name)
        log.debug("created agent %s (%s)", host.agent_id, host.cls_name)
        return self.created(host, existed=False)

    def not_built(self, host: AgentHost, exc: BaseException, trace: str) -> Refusal:
        """The constructor raised: the agent is dropped and the calls waiting for it get the error (I/O loop)."""
        if self.agents.get(host.agent_id) is host:
            del self.agents[host.agent_id]
        refusal = self._refuse(host.agent_id, pb.CREATION_FAILED,
                               f"{host.cls_name}({host.agent_id}) raised in its constructor: "
                               f"{type(exc).__name__}: {exc}\n{trace}")
        host.constructed.set_exception(refusal)  # type: ignore[union-attr]
        host.constructed.exception()   # type: ignore[union-attr]  # retrieved: the pump reads it too
        return refusal

    def _refuse(self, agent_id: str, status: int, message: str) -> Refusal:
        """Remember why agent_id was not created, so calls sent behind its creation get the same answer."""
        self._failed[agent_id] = (status, message)
        if len(self._failed) > 10_000:
            self._failed.popitem(last=False)
        return Refusal(status, message)

    def create_from_session(self, call: pb.Call, outbox: Outbox | None) -> None:
        """A creation sent on the session stream, ahead of the agent's first calls."""
        try:
            request = pb.CreateAgentRequest.FromString(call.payload)
        except Exception as exc:  # noqa: BLE001 - a malformed protobuf
            self._answer(outbox, _status.refusal(call.call_id, pb.BAD_PAYLOAD,
                                                 f"__create__ payload does not parse: {exc}", "DecodeError"))
            return
        try:
            begun = self.begin_create(request)
        except Refusal as refusal:
            self._answer(outbox, _status.refusal(call.call_id, refusal.status, refusal.message))
            return
        if isinstance(begun, pb.CreateAgentResponse):
            self._answer(outbox, pb.Reply(call_id=call.call_id, status=pb.OK, payload=begun.SerializeToString()))
            return
        self.builds.add(begun, request.state, call.call_id, outbox)

    def created(self, host: AgentHost, existed: bool) -> pb.CreateAgentResponse:
        return pb.CreateAgentResponse(agent_id=host.agent_id, name=host.name, server_id=self.server_id,
                                      epoch=self.epoch, existed=existed)

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
            self.create_from_session(call, outbox)
            return
        done = self.results.get(call.call_id)
        if done is not None:                       # a replay of a finished call: answer from its result
            self._answer_replay(call, done, outbox)
            return
        call_id = call.call_id
        if call.epoch and call.epoch != self.epoch:
            self._answer(outbox, _status.refusal(call_id, pb.STALE_EPOCH, f"server {self.server_id} is at epoch "
                                                 f"{self.epoch}, the call expected {call.epoch}"))
            return
        host = self.agents.get(call.agent_id)
        if host is None:
            failed = self._failed.get(call.agent_id)
            if failed is not None:
                self._answer(outbox, _status.refusal(call_id, failed[0], failed[1]))
            else:
                self._answer(outbox, _status.refusal(call_id, pb.UNKNOWN_AGENT, f"no agent {call.agent_id} on server "
                                                     f"{self.server_id} (deleted, or never created here)"))
            return
        if call_id in self.results.running:   # a replay of a running call: wait for the same result
            asyncio.ensure_future(self._answer_later(call, outbox))
            return
        if host.queued >= self.max_pending_calls:
            self._answer(outbox, _status.refusal(call_id, pb.OVERLOADED, f"agent {call.agent_id} has {host.queued} "
                                                 f"calls pending (limit {self.max_pending_calls})"))
            return
        if len(call.payload) > self.max_message_size:
            self._answer(outbox, _status.refusal(call_id, pb.TOO_LARGE, f"arguments of {call.method}() are "
                                                 f"{len(call.payload)} bytes, over the limit of "
                                                 f"{self.max_message_size} bytes"))
            return
        if call.method.startswith("_") and call.method not in ("__call__", "__getattr__"):
            self._answer(outbox, _status.refusal(call_id, pb.UNKNOWN_METHOD, f"{call.method} is private to "
                                                 f"{host.cls_name}; only public methods can be called"))
            return
        try:
            (args, kwargs), placeholders = (loads_collecting(call.payload, self.runtime) if call.payload
                                            else (((), {}), []))
        except Exception as exc:  # noqa: BLE001 - anything a bad pickle raises
            self._answer(outbox, _status.refusal(call_id, pb.BAD_PAYLOAD, f"arguments of {call.method}() on agent "
                                                 f"{call.agent_id} do not unpickle: {type(exc).__name__}: {exc}",
                                                 type(exc).__name__))
            return
        work = Work(call, args, kwargs, placeholders, outbox)
        host.queued += 1
        self.inflight += 1
        self.results.running.add(call_id)
        if not placeholders and host.agent is not None and interleaves(type(host.agent), call.method):
            work.interleaved = True            # runs now, beside the agent's other calls
            self.executor.run(self._run_one, (host, work))
            return
        self._enqueue(host, work)

    async def _answer_later(self, call: pb.Call, outbox: Outbox | None) -> None:
        reply = await self.results.wait(call.call_id, grace=0)
        if reply is not None:
            self._answer_replay(call, reply, outbox)

    def _answer_replay(self, call: pb.Call, reply: pb.Reply, outbox: Outbox | None) -> None:
        """Send a finished call's stored reply again; with checkpoints on, through the agent's mailbox,
        so it leaves with the state it left the agent in (I/O loop)."""
        host = self.agents.get(call.agent_id)
        if outbox is None or host is None or not host.checkpoint or not reply.seq:
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
            if host.pump is None:
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
                    await placeholder._resolve_async()
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
            self.executor.run(self._run, host)

    def _run(self, host: AgentHost) -> None:
        """Work through an agent's ready calls (worker thread)."""
        while True:
            work = host.next_ready()
            if work is None:
                return
            if work.replay is not None:
                reply, owned = work.replay, host.replayed(work.replay)
            else:
                reply = host.execute(work, self.max_message_size)
                owned = host.checkpointed(reply) if host.checkpoint else None
            self._finished(host, work, reply, owned)

    def _run_one(self, job: tuple[AgentHost, Work]) -> None:
        """Run one interleaving call (worker thread): no checkpoint, it does not count as a state change."""
        host, work = job
        self._finished(host, work, host.execute(work, self.max_message_size), None)

    def _finished(self, host: AgentHost, work: Work, reply: pb.Reply, owned: pb.Reply | None) -> None:
        """Hand a finished call to the I/O loop, which answers and counts it in batches (worker thread)."""
        self._done_queue.append((host, work, reply, owned))
        if not self._done_scheduled:
            self._done_scheduled = True
            self.loop.call_soon_threadsafe(self._drain_done)  # type: ignore[union-attr]

    def _drain_done(self) -> None:
        """Hand finished replies to their sessions and the result store (I/O loop)."""
        self._done_scheduled = False
        queue = self._done_queue
        results = self.results
        while queue:
            host, work, reply, owned = queue.popleft()
            if work.replay is not None:     # sent again, not run again: nothing to count or store
                for outbox in work.sessions:
                    outbox.send(owned if owned is not None else reply)
                continue
            host.queued -= 1
            if not work.interleaved:
                host.seq += 1
            self.inflight -= 1
            results.finish(reply, host.agent_id, keep=not host.deleted)
            for outbox in work.sessions:
                outbox.send(owned if owned is not None else reply)
        if self.listener is not None:
            self.listener.load_changed()
