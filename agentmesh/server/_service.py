"""The agent server: hosts agents, runs their calls in order, keeps results for later holders."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import logging
import os
import threading
import time
import traceback
import uuid
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from .. import __version__
from .._config import settings
from ..agents import _agent
from ..rpc import _connection, _wire
from ..rpc._proxy import format_address
from ..rpc._result import loads_collecting
from ..v1 import agent_server_pb2 as pb
from ..v1 import agent_server_pb2_grpc as pb_grpc
from .._tls import ServerTLS
from ._auth import Gate

log = logging.getLogger("agentmesh.server")


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


class _Refusal(Exception):
    """Why an agent was not created: the reply status and the gRPC code that say so."""

    def __init__(self, status: int, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_REFUSAL_TYPES = {pb.CAPACITY: "CapacityError", pb.CLASS_NOT_FOUND: "ClassNotFoundError",
                  pb.CREATION_FAILED: "AgentCreationError", pb.BAD_PAYLOAD: "PayloadError",
                  pb.UNAVAILABLE: "ServerUnavailableError"}


class _Session:
    """One client's session stream: replies to it are batched into frames."""

    __slots__ = ("outbox", "wake", "closed")

    def __init__(self) -> None:
        self.outbox: list[pb.Reply] = []
        self.wake = asyncio.Event()
        self.closed = False

    def send(self, reply: pb.Reply) -> None:
        if not self.closed:
            self.outbox.append(reply)
            self.wake.set()


class _Work:
    __slots__ = ("call", "args", "kwargs", "placeholders", "sessions")

    def __init__(self, call: pb.Call, args: tuple, kwargs: dict, placeholders: list, session: _Session | None):
        self.call = call
        self.args = args
        self.kwargs = kwargs
        self.placeholders = placeholders
        self.sessions = [session] if session is not None else []


class _Workers(concurrent.futures.Executor):
    """Threads for agent code: an idle thread is handed its next job directly.

    Cheaper than ThreadPoolExecutor on the call path: no Future and no shared
    queue per job, and the most recently idle (cache-warm) thread goes first.
    ``run(fn, arg)`` fires and forgets; ``submit`` is the Executor API.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max(1, int(max_workers))
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[list] = []          # [wake lock, job] of each waiting thread, most recent last
        self._backlog: collections.deque = collections.deque()
        self._count = 0
        self._shutdown = False

    def run(self, fn: Any, arg: Any) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("agentmesh: the agent server is stopped")
            if self._idle:
                waiter = self._idle.pop()
                waiter[1] = (fn, arg)
                waiter[0].release()
                return
            if self._count >= self._max:
                self._backlog.append((fn, arg))
                return
            self._count += 1
            n = self._count
        threading.Thread(target=self._work, args=((fn, arg),), name=f"{self._name}_{n}", daemon=True).start()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def job(_: Any) -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                fut.set_exception(exc)

        self.run(job, None)
        return fut

    def _work(self, job: tuple) -> None:
        waiter = [threading.Lock(), None]
        waiter[0].acquire()
        while True:
            fn, arg = job
            try:
                fn(arg)
            except BaseException:  # noqa: BLE001 - a worker must survive its job
                log.exception("agent worker job failed")
            job = None
            with self._lock:
                if self._backlog:
                    job = self._backlog.popleft()
                elif self._shutdown:
                    self._count -= 1
                    return
                else:
                    self._idle.append(waiter)
            if job is None:
                waiter[0].acquire()
                job, waiter[1] = waiter[1], None
                if job is None:      # shut down
                    return

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            idle, self._idle = self._idle, []
            if cancel_futures:
                self._backlog.clear()
        for waiter in idle:
            waiter[1] = None
            waiter[0].release()


class AgentHost:
    """One hosted agent: its mailbox and the runner that works through it in order."""

    def __init__(self, agent_id: str, agent: Any, cls_name: str, max_concurrency: int,
                 checkpoint: bool = False, seq: int = 0) -> None:
        self.agent_id = agent_id
        self.agent = agent
        self.cls_name = cls_name
        self.checkpoint = checkpoint   # send the agent's state back with every reply (failover)
        self.max_concurrency = max(1, int(max_concurrency))
        self.lock = threading.Lock()
        self.ready: collections.deque[_Work] = collections.deque()
        self.active = 0
        self.waiting: collections.deque[_Work] = collections.deque()   # held back: placeholders, construction
        self.constructed: asyncio.Future | None = None   # set while the constructor runs
        self.build: tuple | None = None
        self.pump: asyncio.Task | None = None
        self.queued = 0        # calls accepted and not yet finished
        self.seq = seq         # calls completed (counting those before a restore from a checkpoint)
        self.ckpt_seq = seq    # the same, counted by the worker threads for checkpoints


class AgentServer(pb_grpc.AgentServerServicer):
    """The gRPC service that hosts agents. Runs on the process's I/O loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        capacity: int,
        custom_agent_classes: list[type] | None = None,
        token: str | None = None,
        max_message_size: int = _wire.DEFAULT_MAX_MESSAGE_SIZE,
        max_pending_calls: int = 10_000,
        result_ttl: float = 600.0,
        max_results: int = 100_000,
        max_workers: int = 512,
        server_id: str | None = None,
        allow_shipped_classes: bool = True,
        registry: str | None = None,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        registry_ttl: int = 3,
        advertise_host: str | None = None,
        fence_after: float = 1.5,
        tls: ServerTLS | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.capacity = capacity
        self.token = token
        self.max_message_size = max_message_size
        self.max_pending_calls = max_pending_calls
        self.server_id = server_id or uuid.uuid4().hex[:12]
        self.epoch = time.time_ns()
        self.agents: dict[str, AgentHost] = {}
        self.classes: dict[str, type] = {}       # digest -> class
        self.class_names: list[str] = []
        for cls in custom_agent_classes or ():
            self._remember_class(cls)
        self.allow_shipped_classes = allow_shipped_classes
        self.fence_after = fence_after
        self.tls = tls   # serve TLS (mutual when it has a client CA); None: plaintext
        self.registry_options = (
            dict(url=registry, namespace=namespace, labels=labels, ttl=registry_ttl, advertise_host=advertise_host)
            if registry else None)
        self.registration: Any = None
        if registry and not settings.registry:   # this process's own proxies and fetches use it too
            settings.registry, settings.namespace = registry, namespace
        self.results = ResultStore(max_results, result_ttl)
        self.inflight = 0
        self.started_at = time.time()
        self.draining = False
        self._failed: collections.OrderedDict[str, tuple[int, str]] = collections.OrderedDict()
        self._sessions: set[_Session] = set()
        self._done_queue: collections.deque[tuple[AgentHost, _Work, pb.Reply]] = collections.deque()
        self._done_scheduled = False
        self._executor = _Workers(max_workers, "agentmesh-agent")
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task | None = None
        self.finished = threading.Event()   # set once stop() is done; threads wait on it

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> int:
        """Bind and serve; returns the port. A port in use is an error, never a second listener."""
        self._loop = asyncio.get_running_loop()
        options = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_send_message_length", self.max_message_size + 64 * 1024),
            ("grpc.max_receive_message_length", self.max_message_size + 64 * 1024),
            *_wire.SERVER_KEEPALIVE_OPTIONS,
        ]
        server = grpc.aio.server(interceptors=[Gate(self.token)], options=options)
        pb_grpc.add_AgentServerServicer_to_server(self, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            address = format_address(self.host, self.port)
            if self.tls is not None:
                port = server.add_secure_port(address, self.tls.credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"agentmesh: cannot listen on {self.host}:{self.port}: the port is in use "
                          f"or the address is not local ({exc})") from None
        self.port = port
        await server.start()
        self._server = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(_wire.SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        _connection.local_servers[self.server_id] = self
        self._sweeper = asyncio.ensure_future(self._sweep_results())
        if self.registry_options:
            from ..discovery.registration import Registration

            self.registration = Registration(self, **self.registry_options)
            await self.registration.start(wait=2.0)
        threading.Thread(target=self._watch_for_pauses, name="agentmesh-pause-watch", daemon=True).start()
        log.info("agent server %s listening on %s:%d (capacity %d)", self.server_id, self.host, port, self.capacity)
        return port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop: NOT_SERVING, let running calls finish (up to grace s), end sessions, close."""
        if self._server is None or self.draining:
            return
        self.draining = True
        await self._health.enter_graceful_shutdown()
        if self.registration is not None:
            await self.registration.stop()
        deadline = time.monotonic() + grace
        # Clients watching health move their agents away and close their sessions; running calls finish.
        while (self.inflight or self._sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for session in list(self._sessions):
            session.closed = True
            session.wake.set()
        await self._server.stop(max(0.0, min(0.5, deadline - time.monotonic())))
        if self._sweeper:
            self._sweeper.cancel()
        _connection.local_servers.pop(self.server_id, None)
        self._executor.shutdown(wait=False)
        self.finished.set()
        log.info("agent server %s stopped", self.server_id)

    def _watch_for_pauses(self) -> None:
        """Notice that this process was stopped (SIGSTOP, a frozen VM) for longer than fence_after."""
        last = time.monotonic()
        while not self.finished.wait(0.1):
            now = time.monotonic()
            if now - last > self.fence_after and self.agents:
                self._loop.call_soon_threadsafe(self._fence_after_pause, now - last)
            last = now

    def _fence_after_pause(self, paused: float) -> None:
        self.fence(f"it was paused for {paused:.1f} s, so callers have moved its agents")
        if self.registration is not None:
            self.registration.renew()

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

    async def _sweep_results(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, max(1.0, self.results.ttl / 4)))
            self.results.sweep()

    # -- classes and agents ---------------------------------------------------
    def _remember_class(self, cls: type) -> None:
        blob = _wire.dumps(cls)
        self.classes[hashlib.sha256(blob).hexdigest()] = cls
        self.class_names.append(f"{cls.__module__}:{cls.__qualname__}")

    def _resolve_class(self, ref: pb.ClassRef) -> type:
        cls = self.classes.get(ref.digest)
        if cls is not None:
            return cls
        if not ref.blob:
            raise LookupError("unknown class digest")
        if not self.allow_shipped_classes:
            raise LookupError(f"class {ref.name} is not hosted here (hosted: {', '.join(self.class_names) or 'none'})")
        if hashlib.sha256(ref.blob).hexdigest() != ref.digest:
            raise ValueError(f"class {ref.name}: blob does not match its digest")
        cls = _wire.loads(ref.blob)
        if not isinstance(cls, type):
            raise TypeError(f"{ref.name} is not a class but {type(cls).__name__}")
        self.classes[ref.digest] = cls
        return cls

    async def CreateAgent(self, request: pb.CreateAgentRequest, context: grpc.aio.ServicerContext) -> pb.CreateAgentResponse:
        try:
            begun = self._begin_create(request)
            if isinstance(begun, pb.CreateAgentResponse):
                return begun
            return await self._finish_create(begun, request)
        except _Refusal as refusal:
            await context.abort(refusal.code, refusal.message)

    def _begin_create(self, request: pb.CreateAgentRequest) -> AgentHost | pb.CreateAgentResponse:
        """Check a creation and register the agent as under construction (I/O loop); raises _Refusal.

        Calls that arrive for it meanwhile wait in its mailbox.
        """
        agent_id = request.agent_id
        if self.draining:
            raise _Refusal(pb.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, f"agent server {self.server_id} is draining")
        existing = self.agents.get(agent_id)
        if existing is not None:
            return self._created(existing, existed=True)
        if not agent_id:
            raise _Refusal(pb.BAD_PAYLOAD, grpc.StatusCode.INVALID_ARGUMENT, "agent_id is empty")
        if len(self.agents) >= self.capacity:
            raise self._refuse_creation(agent_id, pb.CAPACITY, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"agent server {self.server_id} is full: capacity {self.capacity} agents")
        name = request.cls.name
        try:
            cls = self._resolve_class(request.cls)
        except LookupError as exc:
            if "unknown class digest" in str(exc):
                raise _Refusal(pb.CLASS_NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                               "unknown class digest: send the class") from None
            raise self._refuse_creation(agent_id, pb.CLASS_NOT_FOUND, grpc.StatusCode.NOT_FOUND, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a class that cannot be loaded here
            raise self._refuse_creation(
                agent_id, pb.CLASS_NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                f"class {name} cannot be loaded on this server: {type(exc).__name__}: {exc}") from None
        try:
            args, kwargs = _wire.loads(request.init_args) if request.init_args else ((), {})
        except Exception as exc:  # noqa: BLE001
            raise self._refuse_creation(
                agent_id, pb.BAD_PAYLOAD, grpc.StatusCode.INVALID_ARGUMENT,
                f"constructor arguments of {name} do not unpickle: {type(exc).__name__}: {exc}") from None
        checkpoint = request.checkpoint and getattr(cls, "checkpoint", True) is not False
        host = AgentHost(agent_id, None, name, getattr(cls, "max_concurrency", 1) or 1,
                         checkpoint=checkpoint, seq=request.state_seq)
        host.constructed = self._loop.create_future()
        host.build = (cls, args, kwargs)
        self.agents[agent_id] = host
        return host

    async def _finish_create(self, host: AgentHost, request: pb.CreateAgentRequest) -> pb.CreateAgentResponse:
        """Run the constructor in a worker thread; release the calls waiting for it."""
        cls, args, kwargs = host.build
        host.build = None
        try:
            host.agent = await self._loop.run_in_executor(
                self._executor, _construct, cls, host.agent_id, args, kwargs, request.state)
        except Exception as exc:  # noqa: BLE001 - the constructor raised
            if self.agents.get(host.agent_id) is host:
                del self.agents[host.agent_id]
            message = (f"{host.cls_name}({host.agent_id}) raised in its constructor: "
                       f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            refusal = self._refuse_creation(host.agent_id, pb.CREATION_FAILED, grpc.StatusCode.INVALID_ARGUMENT,
                                            message)
            host.constructed.set_exception(refusal)
            host.constructed.exception()   # retrieved: the pump reads it too
            raise refusal from None
        host.constructed.set_result(None)
        if self.registration is not None:
            self.registration.agent_added(host.agent_id, self._created(host, False).name, host.cls_name)
        log.debug("created agent %s (%s)", host.agent_id, host.cls_name)
        return self._created(host, existed=False)

    def _refuse_creation(self, agent_id: str, status: int, code: grpc.StatusCode, message: str) -> "_Refusal":
        """Remember why agent_id was not created, so calls sent behind its creation get the same answer."""
        self._failed[agent_id] = (status, message)
        if len(self._failed) > 10_000:
            self._failed.popitem(last=False)
        return _Refusal(status, code, message)

    def _create_from_session(self, call: pb.Call, session: _Session | None) -> None:
        """A creation sent on the session stream, ahead of the agent's first calls."""
        try:
            request = pb.CreateAgentRequest.FromString(call.payload)
        except Exception as exc:  # noqa: BLE001 - a malformed protobuf
            self._refuse(session, call, pb.BAD_PAYLOAD, "DecodeError", f"__create__ payload does not parse: {exc}")
            return
        try:
            begun = self._begin_create(request)
        except _Refusal as refusal:
            self._refuse(session, call, refusal.status, _REFUSAL_TYPES.get(refusal.status, "AgentCreationError"),
                         refusal.message)
            return
        if isinstance(begun, pb.CreateAgentResponse):
            self._answer_create(session, call, begun)
            return

        async def finish() -> None:
            try:
                self._answer_create(session, call, await self._finish_create(begun, request))
            except _Refusal as refusal:
                self._refuse(session, call, refusal.status, "AgentCreationError", refusal.message)

        asyncio.ensure_future(finish())

    def _answer_create(self, session: _Session | None, call: pb.Call, response: pb.CreateAgentResponse) -> None:
        if session is not None:
            session.send(pb.Reply(call_id=call.call_id, status=pb.OK, payload=response.SerializeToString()))

    def _created(self, host: AgentHost, existed: bool) -> pb.CreateAgentResponse:
        name = getattr(host.agent, "name", "")
        return pb.CreateAgentResponse(agent_id=host.agent_id, name=name if isinstance(name, str) else "",
                                      server_id=self.server_id, epoch=self.epoch, existed=existed)

    async def DeleteAgent(self, request: pb.DeleteAgentRequest, context: grpc.aio.ServicerContext) -> pb.DeleteAgentResponse:
        deleted = self.agents.pop(request.agent_id, None) is not None
        if deleted and self.registration is not None:
            self.registration.agent_removed(request.agent_id)
        return pb.DeleteAgentResponse(deleted=deleted)

    async def GetInfo(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        return pb.ServerInfo(
            server_id=self.server_id, host=self.host, port=self.port, capacity=self.capacity,
            agents=len(self.agents), inflight=self.inflight, classes=self.class_names,
            python=_wire.PYTHON_VERSION, version=__version__, epoch=self.epoch, pid=os.getpid(),
            status="DRAINING" if self.draining else "SERVING")

    async def GetState(self, request: pb.StateRequest, context: grpc.aio.ServicerContext) -> pb.AgentState:
        host = self.agents.get(request.agent_id)
        if host is None or host.agent is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no agent {request.agent_id} on server {self.server_id}")
        state = await self._loop.run_in_executor(self._executor, _agent.checkpoint_of, host.agent)
        return pb.AgentState(agent_id=host.agent_id, state=state, seq=host.seq)

    async def FetchResult(self, request: pb.FetchRequest, context: grpc.aio.ServicerContext) -> pb.Reply:
        reply = await self.fetch_result(request.call_id, request.agent_id)
        if reply.status == pb.EXPIRED:
            await context.abort(grpc.StatusCode.NOT_FOUND, reply.error_message)
        return reply

    async def fetch_result(self, call_id: str, agent_id: str = "") -> pb.Reply:
        """The reply of call_id, waiting while it runs (also used in-process, without gRPC)."""
        reply = await self.results.wait(call_id, grace=30.0)
        if reply is None:
            return pb.Reply(
                call_id=call_id, status=pb.EXPIRED, error_type="ResultExpiredError",
                error_message=(f"the result of call {call_id} is unknown or has expired on server "
                               f"{self.server_id} (results are kept {self.results.ttl:g} s, at most "
                               f"{self.results.max_results} of them)"))
        return reply

    # -- the call path --------------------------------------------------------
    async def Session(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        session = _Session()
        self._sessions.add(session)
        await context.write(pb.ServerFrame(hello=pb.Hello(
            server_id=self.server_id, epoch=self.epoch, max_message_size=self.max_message_size)))
        reader = asyncio.ensure_future(self._read_session(request_iterator, session))
        reader.add_done_callback(lambda _: session.wake.set())
        wake = session.wake
        try:
            while True:
                if not session.outbox:
                    if session.closed or reader.done():
                        break
                    await wake.wait()
                wake.clear()
                if session.outbox:
                    replies, session.outbox = session.outbox, []
                    if len(replies) == 1:   # the usual case of a caller waiting for its one call
                        await context.write(pb.ServerFrame(replies=replies))
                        continue
                    for frame in self._frames(replies):
                        await context.write(frame)
        finally:
            session.closed = True
            self._sessions.discard(session)
            reader.cancel()

    def _frames(self, replies: list[pb.Reply]) -> list[pb.ServerFrame]:
        """Split replies into frames that stay under the message size limit."""
        budget = max(1, self.max_message_size // 2)
        frames, batch, size = [], [], 0
        for reply in replies:
            cost = len(reply.payload) + len(reply.state) + len(reply.traceback) + 64
            if batch and size + cost > budget:
                frames.append(pb.ServerFrame(replies=batch))
                batch, size = [], 0
            batch.append(reply)
            size += cost
        frames.append(pb.ServerFrame(replies=batch))
        return frames

    async def _read_session(self, request_iterator, session: _Session) -> None:
        try:
            async for frame in request_iterator:
                for call in frame.calls:
                    self.dispatch(call, session)
                if self.registration is not None:
                    self.registration.load_changed()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - one bad stream must not hurt the server
            log.warning("session ended by an error", exc_info=True)

    def dispatch(self, call: pb.Call, session: _Session | None) -> None:
        """Route one call to its agent's mailbox (I/O loop)."""
        if call.method == "__create__":
            self._create_from_session(call, session)
            return
        done = self.results.get(call.call_id)
        if done is not None:                       # a replay of a finished call: answer from its result
            if session is not None:
                session.send(done)
            return
        if call.epoch and call.epoch != self.epoch:
            self._refuse(session, call, pb.STALE_EPOCH, "StaleEpochError",
                         f"server {self.server_id} is at epoch {self.epoch}, the call expected {call.epoch}")
            return
        host = self.agents.get(call.agent_id)
        if host is None:
            failed = self._failed.get(call.agent_id)
            if failed is not None:
                self._refuse(session, call, failed[0], _REFUSAL_TYPES.get(failed[0], "AgentCreationError"), failed[1])
                return
            self._refuse(session, call, pb.UNKNOWN_AGENT, "UnknownAgentError",
                         f"no agent {call.agent_id} on server {self.server_id} (deleted, or never created here)")
            return
        if call.call_id in self.results.running:   # a replay of a running call: wait for the same result
            asyncio.ensure_future(self._answer_later(call.call_id, session))
            return
        if host.queued >= self.max_pending_calls:
            self._refuse(session, call, pb.OVERLOADED, "BackpressureError",
                         f"agent {call.agent_id} has {host.queued} calls pending (limit {self.max_pending_calls})")
            return
        if len(call.payload) > self.max_message_size:
            self._refuse(session, call, pb.TOO_LARGE, "MessageTooLargeError",
                         f"arguments of {call.method}() are {len(call.payload)} bytes, over the "
                         f"limit of {self.max_message_size} bytes")
            return
        if call.method.startswith("_") and call.method not in ("__call__", "__getattr__"):
            self._refuse(session, call, pb.UNKNOWN_METHOD, "UnknownMethodError",
                         f"{call.method} is private to {host.cls_name}; only public methods can be called")
            return
        try:
            (args, kwargs), placeholders = loads_collecting(call.payload) if call.payload else (((), {}), [])
        except Exception as exc:  # noqa: BLE001 - anything a bad pickle raises
            self._refuse(session, call, pb.BAD_PAYLOAD, type(exc).__name__,
                         f"arguments of {call.method}() on agent {call.agent_id} do not unpickle: "
                         f"{type(exc).__name__}: {exc}")
            return
        work = _Work(call, args, kwargs, placeholders, session)
        host.queued += 1
        self.inflight += 1
        self.results.running.add(call.call_id)
        if placeholders or host.waiting or host.agent is None:
            host.waiting.append(work)
            if host.pump is None:
                host.pump = asyncio.ensure_future(self._pump(host))
        else:
            self._ready(host, work)

    def _refuse(self, session: _Session | None, call: pb.Call, status: int, error_type: str, message: str) -> None:
        if session is not None:
            session.send(pb.Reply(call_id=call.call_id, status=status, error_type=error_type, error_message=message))

    async def _answer_later(self, call_id: str, session: _Session | None) -> None:
        reply = await self.results.wait(call_id, grace=0)
        if reply is not None and session is not None:
            session.send(reply)

    async def _pump(self, host: AgentHost) -> None:
        """Resolve the placeholders of waiting calls without holding a thread, in order."""
        try:
            if host.constructed is not None and not host.constructed.done():
                try:
                    await asyncio.shield(host.constructed)
                except _Refusal as refusal:
                    while host.waiting:
                        self._abandon(host, host.waiting.popleft(), refusal.status, "AgentCreationError",
                                      refusal.message)
                    return
            while host.waiting:
                work = host.waiting[0]
                for placeholder in work.placeholders:
                    await placeholder._resolve_async()
                host.waiting.popleft()
                self._ready(host, work)
        finally:
            host.pump = None

    def _abandon(self, host: AgentHost, work: _Work, status: int, error_type: str, message: str) -> None:
        """Answer an accepted call with an error without running it (I/O loop)."""
        host.queued -= 1
        self.inflight -= 1
        self.results.running.discard(work.call.call_id)
        for session in work.sessions:
            self._refuse(session, work.call, status, error_type, message)

    def _ready(self, host: AgentHost, work: _Work) -> None:
        with host.lock:
            host.ready.append(work)
            if host.active >= host.max_concurrency:
                return
            host.active += 1
        self._executor.run(self._run, host)

    # -- worker threads ---------------------------------------------------------
    def _run(self, host: AgentHost) -> None:
        """Work through an agent's ready calls (worker thread)."""
        while True:
            with host.lock:
                if not host.ready:
                    host.active -= 1
                    return
                work = host.ready.popleft()
            reply = self._execute(host, work)
            if host.checkpoint:
                self._attach_checkpoint(host, reply)
            self._done_queue.append((host, work, reply))
            if not self._done_scheduled:
                self._done_scheduled = True
                self._loop.call_soon_threadsafe(self._drain_done)

    def _execute(self, host: AgentHost, work: _Work) -> pb.Reply:
        call = work.call
        call_id = call.call_id
        try:
            if call.method == "__getattr__":
                name = work.args[0] if work.args and isinstance(work.args[0], str) else ""
                if not name or name.startswith("_") or not hasattr(host.agent, name):
                    return pb.Reply(call_id=call_id, status=pb.UNKNOWN_METHOD, error_type="UnknownMethodError",
                                    error_message=f"{host.cls_name} has no public attribute or method {name!r}")
                result = getattr(host.agent, name)
            else:
                method = getattr(host.agent, call.method, None)
                if method is None or not callable(method):
                    return pb.Reply(call_id=call_id, status=pb.UNKNOWN_METHOD, error_type="UnknownMethodError",
                                    error_message=f"{host.cls_name} has no method {call.method}()")
                result = method(*work.args, **work.kwargs)
        except Exception as exc:  # noqa: BLE001 - the agent's own error goes back to the caller
            return pb.Reply(call_id=call_id, status=pb.ERROR, error_type=type(exc).__qualname__,
                            error_message=str(exc), traceback=traceback.format_exc())
        try:
            payload = _wire.dumps(result)
        except Exception as exc:  # noqa: BLE001
            return pb.Reply(call_id=call_id, status=pb.BAD_PAYLOAD, error_type=type(exc).__name__,
                            error_message=f"the result of {call.method}() ({type(result).__name__}) "
                                          f"cannot be pickled: {exc}")
        if len(payload) > self.max_message_size:
            return pb.Reply(call_id=call_id, status=pb.TOO_LARGE, error_type="MessageTooLargeError",
                            error_message=f"the result of {call.method}() is {len(payload)} bytes, over the "
                                          f"limit of {self.max_message_size} bytes")
        return pb.Reply(call_id=call_id, status=pb.OK, payload=payload)

    def _attach_checkpoint(self, host: AgentHost, reply: pb.Reply) -> None:
        """Put the agent's state after this call into the reply (worker thread)."""
        with host.lock:
            host.ckpt_seq += 1
            reply.seq = host.ckpt_seq
        try:
            reply.state = _agent.checkpoint_of(host.agent)
        except Exception as exc:  # noqa: BLE001 - an unpicklable attribute
            host.checkpoint = False
            log.warning("agent %s (%s): state cannot be pickled (%s: %s); checkpoints off for it, so "
                        "failover will restart it from its constructor", host.agent_id, host.cls_name,
                        type(exc).__name__, exc)

    def _drain_done(self) -> None:
        """Hand finished replies to their sessions and the result store (I/O loop)."""
        self._done_scheduled = False
        queue = self._done_queue
        results = self.results
        while queue:
            host, work, reply = queue.popleft()
            host.queued -= 1
            host.seq += 1
            self.inflight -= 1
            results.finish(reply)
            for session in work.sessions:
                session.send(reply)
        if self.registration is not None:
            self.registration.load_changed()


def _construct(cls: type, agent_id: str, args: tuple, kwargs: dict, state: bytes = b"") -> Any:
    """Build an agent with its proxy's id (worker thread), from a checkpoint when given one."""
    if state and _agent.checkpoint_kind(state) == "attrs":
        agent = cls.__new__(cls)      # the state is all of it: no second run of the constructor
        _agent.restore_checkpoint(agent, state)
        return agent
    with _agent.assigned_agent_id(agent_id):
        agent = cls(*args, **kwargs)
    if state:
        _agent.restore_checkpoint(agent, state)
    try:
        agent.agent_id = agent_id
    except AttributeError:
        pass
    return agent

