"""The agent server: the gRPC service in front of its hosted agents, its health, its registration."""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from .. import _frames, _protocol, _status
from .._address import format_address
from .._config import ServerConfig
from .._runtime import Runtime
from .._version import __version__
from ..discovery.records import check_labels
from ..discovery.registration import Registration
from ..etcd import redact_url
from ..store import open_store
from ..v1 import agent_server_pb2 as pb
from ..v1 import agent_server_pb2_grpc as pb_grpc
from ._addresses import AddressBook
from ._auth import Credentials, Gate
from ._classes import HostedClasses, classes_in_folder
from ._durable import Durable
from ._files import FileRoot
from ._handlers import add_service
from ._hosting import Hosting, Refusal
from ._open_health import OpenHealth
from ._outbox import ClientSession, entry_cost
from ._pauses import PauseWatch
from ._telemetry import live_metrics, resident_mib

log = logging.getLogger("agentmesh.server")


class AgentServer(pb_grpc.AgentServerServicer):
    """The gRPC service that hosts agents, set up as its config says. Runs on its runtime's I/O loop."""

    def __init__(self, config: ServerConfig, runtime: Runtime) -> None:
        if config.registry and config.token is None:
            raise ValueError(f"agent server: a registry ({redact_url(config.registry)}) needs the namespace token "
                             f"(token=, --token-file or AGENTMESH_TOKEN_FILE): its records are signed with it, "
                             f"and readers ignore records they cannot verify")
        check_labels(config.labels)   # a ValueError naming the label, before it listens
        self.config = config
        self.runtime = runtime
        self.server_id = config.server_id
        self.port = config.port                   # the port it listens on, once it does
        self.metrics_port = config.metrics_port   # where it serves /metrics (0 until it picked a free port)
        self.files = FileRoot(config.file_dir) if config.file_dir else None   # what DownloadFile may serve
        given = list(config.agent_classes) + (classes_in_folder(config.agent_dir) if config.agent_dir else [])
        classes = HostedClasses(given, config.allow_shipped_classes, config.max_classes, config.max_class_bytes)
        self.hosting = Hosting(config, runtime, classes)
        self.credentials = Credentials(self.server_id, config.namespace, config.token,
                                       AddressBook(config.bind_host, config.advertise_host))
        self.open_health = OpenHealth()   # what unauthenticated probes are told
        self.registration: Registration | None = None
        self.started_at = time.time()
        self._cpu_mark = (time.monotonic(), time.process_time())   # for GetInfo's cpu_percent
        self.sessions: set[ClientSession] = set()   # the client sessions open now
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._sweeper: asyncio.Task | None = None
        self.finished = threading.Event()   # set once stop() is done; threads wait on it
        self.pauses = PauseWatch(config.fence_after, self._stopped, self.finished)   # busy or stopped?
        self._live_metrics = functools.partial(live_metrics, self)   # a metrics source while metrics are on

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> int:
        """Bind and serve; returns the port. A port in use is an error, never a second listener."""
        self.hosting.bind_loop(asyncio.get_running_loop())
        config = self.config
        if config.state_store:   # refused here, naming what is wrong, before the server serves anything
            store = await asyncio.get_running_loop().run_in_executor(
                None, open_store, config.state_store, config.state_store_password_file)
            self.hosting.use_store(Durable(store, self.server_id, commit_wait=config.state_store_wait))
            log.info("agent server %s commits durable agents to state store %s", self.server_id, store.url)
        server = grpc.aio.server(interceptors=[Gate(self.credentials, self.open_health)],
                                 options=_protocol.server_options(config.max_message_size))
        add_service(self, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            address = format_address(config.bind_host, config.port)
            if config.tls is not None:
                port = server.add_secure_port(address, config.tls.credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"agentmesh: cannot listen on {config.bind_host}:{config.port}: the port is in use "
                          f"or the address is not local ({exc})") from None
        self.port = port
        await self.credentials.addresses.start(port)
        await server.start()
        self._server = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(_protocol.SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self.open_health.set(health_pb2.HealthCheckResponse.SERVING)
        self.runtime.pool.add_local(self.server_id, self)
        if self.metrics_port is not None:
            self.metrics_port = self.runtime.serve_metrics(self.metrics_port, config.bind_host or "0.0.0.0")
        if self.runtime.metrics is not None:
            self.hosting.metrics = self.runtime.metrics
            self.runtime.metrics.add_source(self._live_metrics)
        self._sweeper = asyncio.ensure_future(self._sweep_results())
        if config.registry:
            self.registration = Registration(
                config, self.hosting, port=port, metrics_port=self.metrics_port,
                class_names=self.hosting.classes.names, started_at=self.started_at, key=self.credentials.key,
                etcd_options=self.runtime.settings.etcd_options())
            self.hosting.listener = self.registration
            await self.registration.start(wait=2.0)
        self.pauses.start()
        self.hosting.check_pause = self._check_pause
        mode = "plaintext" if config.tls is None else "mutual TLS" if config.tls.mutual else "TLS"
        log.info("agent server %s listening on %s:%d (%s), capacity %d%s", self.server_id, config.bind_host, port,
                 mode, config.capacity,
                 f", /metrics on port {self.metrics_port}" if self.metrics_port is not None else "")
        return port

    async def stop(self, grace: float = 5.0) -> None:
        """Stop: NOT_SERVING, let running calls finish (up to grace s), end sessions, close."""
        if self._server is None or self.hosting.draining:
            return
        self.hosting.draining = True
        self.open_health.set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.enter_graceful_shutdown()
        if self.registration is not None:
            await self.registration.stop()
        deadline = time.monotonic() + grace
        # Clients watching health move their agents away and close their sessions; running calls finish.
        while (self.hosting.inflight or self.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for session in list(self.sessions):
            session.closed = True
            session.wake.set()
        await self._server.stop(max(0.0, min(0.5, deadline - time.monotonic())))
        if self._sweeper:
            self._sweeper.cancel()
        self.runtime.pool.remove_local(self.server_id)
        if self.runtime.metrics is not None:
            self.runtime.metrics.remove_source(self._live_metrics)
        self.hosting.executor.shutdown(wait=False)
        if self.hosting.durable is not None:   # what is queued is written before the store closes
            await asyncio.get_running_loop().run_in_executor(None, self.hosting.durable.close)
        self.hosting.coroutines.stop()
        self.finished.set()
        log.info("agent server %s stopped", self.server_id)

    def _check_pause(self) -> None:
        """Assess a pause now if one is overdue (a stop is reported at once, holding calls and replies)."""
        if self.pauses.overdue():
            self.pauses.assess()

    def _stopped(self, paused: float) -> None:
        """The process was stopped for `paused` s (any thread): callers may have moved agents off it. With a
        registry, calls wait while the records say which (those are dropped); without one, their owners
        say so when they reach it again (DeleteAgent with moved)."""
        if self.registration is None or not self.hosting.agents:
            log.info("agent server %s was stopped for %.1f s; agents whose owners moved them are dropped as "
                     "the owners say so", self.server_id, paused)
            return
        self.hosting.hold_calls()
        self.runtime.loop.call_soon(lambda: asyncio.ensure_future(self._recheck_after_stop(paused)))

    async def _recheck_after_stop(self, paused: float) -> None:
        try:
            await self.registration.drop_moved(f"it was stopped for {paused:.1f} s")
        except Exception as exc:  # noqa: BLE001 - unreachable registry: keep serving what we hold
            log.warning("agent server %s: after a stop of %.1f s the registry could not say which agents moved "
                        "(%s); keeping them all", self.server_id, paused, exc)
        finally:
            self.hosting.release_calls()

    async def _sweep_results(self) -> None:
        results = self.hosting.results
        while True:
            await asyncio.sleep(min(30.0, max(1.0, results.ttl / 4)))
            results.sweep()
            self.hosting.streams.sweep()

    # -- unary RPCs -------------------------------------------------------------
    async def CreateAgent(self, request: pb.CreateAgentRequest, context: grpc.aio.ServicerContext) -> pb.CreateAgentResponse:
        try:
            return await self.hosting.create(request)
        except Refusal as refusal:
            await context.abort(refusal.code, refusal.message, _status.trailing(refusal.status))

    async def DeleteAgent(self, request: pb.DeleteAgentRequest, context: grpc.aio.ServicerContext) -> pb.DeleteAgentResponse:
        if request.moved:   # their owner re-created them elsewhere while this server did not answer
            ids = [request.agent_id, *request.agent_ids] if request.agent_id else list(request.agent_ids)
            count = self.hosting.fence("their owner moved them elsewhere while this server did not answer", ids)
            return pb.DeleteAgentResponse(deleted=count > 0, count=count)
        deleted = self.hosting.delete(request.agent_id) if request.agent_id else False
        count = int(deleted) + sum(self.hosting.delete(agent_id) for agent_id in request.agent_ids)
        return pb.DeleteAgentResponse(deleted=deleted, count=count)

    async def GetInfo(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        hosting = self.hosting
        return pb.ServerInfo(
            server_id=self.server_id, host=self.config.bind_host, port=self.port, capacity=self.config.capacity,
            agents=len(hosting.agents), inflight=hosting.inflight, classes=hosting.classes.names,
            python=_protocol.PYTHON_VERSION, version=__version__, epoch=hosting.epoch, pid=os.getpid(),
            status="DRAINING" if hosting.draining else "SERVING", cpu_percent=self._cpu_percent(),
            memory_mib=resident_mib(), uptime=time.time() - self.started_at,
            file_dir=self.files.path if self.files else "")

    def _cpu_percent(self) -> float:
        """CPU time this process used since the previous call (or the start), in % of one core's wall time."""
        (wall0, cpu0), now = self._cpu_mark, (time.monotonic(), time.process_time())
        self._cpu_mark = now
        return 100.0 * (now[1] - cpu0) / max(now[0] - wall0, 1e-6)

    async def ListAgents(self, request: pb.ListAgentsRequest, context: grpc.aio.ServicerContext) -> pb.AgentList:
        return pb.AgentList(agents=[
            pb.AgentSummary(agent_id=hosted.agent_id, name=hosted.name, type=hosted.cls_name.rpartition(":")[2],
                            cls=hosted.cls_name, seq=hosted.seq, queued=hosted.queued, checkpoints_on=hosted.checkpoints_on)
            for hosted in list(self.hosting.agents.values())])

    async def DeleteAllAgents(self, request: pb.DeleteAllAgentsRequest,
                              context: grpc.aio.ServicerContext) -> pb.DeleteAllAgentsResponse:
        deleted = sum(self.hosting.delete(agent_id) for agent_id in list(self.hosting.agents))
        log.info("agent server %s: deleted all %d agent(s) at a caller's request", self.server_id, deleted)
        return pb.DeleteAllAgentsResponse(deleted=deleted)

    async def StopServer(self, request: pb.StopRequest, context: grpc.aio.ServicerContext) -> pb.StopResponse:
        grace = request.grace if request.grace > 0 else self.config.grace
        log.info("agent server %s stopping: asked by %s", self.server_id, context.peer())
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.stop(grace)))
        return pb.StopResponse(server_id=self.server_id)

    async def DownloadFile(self, request: pb.FileRequest, context: grpc.aio.ServicerContext) -> Any:
        if self.files is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"agent server {self.server_id} serves no files "
                                                           f"(it was started without file_dir / --file-dir)")
        try:
            handle = self.files.open(request.path)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"agent server {self.server_id}: {exc}")
        async for chunk in FileRoot.serve(handle, self.hosting.executor):
            yield chunk

    async def ReadStream(self, request: pb.StreamRequest, context: grpc.aio.ServicerContext) -> None:
        await self.hosting.streams.serve(request.call_id, self.hosting.results, context,
                                         _frames.frame_budget(self.config.max_message_size), self.server_id)

    async def GetState(self, request: pb.StateRequest, context: grpc.aio.ServicerContext) -> pb.AgentState:
        hosted = self.hosting.agents.get(request.agent_id)
        if hosted is None or hosted.agent is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no agent {request.agent_id} on server {self.server_id}",
                                _status.trailing(pb.UNKNOWN_AGENT))
        state = await self.hosting.state_of(hosted)
        return pb.AgentState(agent_id=hosted.agent_id, state=state, seq=hosted.seq)

    async def FetchResult(self, request: pb.FetchRequest, context: grpc.aio.ServicerContext) -> pb.Reply:
        reply = await self.fetch_result(request.call_id, request.agent_id, context.invocation_metadata())
        if reply.status in (pb.EXPIRED, pb.OVERLOADED):
            await context.abort(_status.TABLE[reply.status].code, reply.error_message, _status.trailing(reply.status))
        return reply

    async def fetch_result(self, call_id: str, agent_id: str = "", trace: Any = None) -> pb.Reply:
        """The reply of call_id, waiting while it runs (also used in-process, without gRPC).

        At most max_fetch_waiters wait at once: more are refused (OVERLOADED), not queued. trace: the
        fetcher's trace context (key, value pairs), when it traces.
        """
        fetching = self.hosting.results.fetch(call_id, self.server_id, self.config.max_fetch_waiters)
        tracing = self.runtime.tracing
        return await (tracing.serve_fetch(trace, agent_id, call_id, fetching) if tracing is not None and trace
                      else fetching)

    # -- the call path --------------------------------------------------------
    async def Session(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        session = ClientSession(self.config.session_backlog_bytes, self.hosting.release)
        self.sessions.add(session)
        ticket = dict(context.invocation_metadata() or ()).get(_protocol.MD_AUTH, "")
        self.credentials.session_opened(ticket)   # the caller's other RPCs ride on it while the session lasts
        await context.write(pb.ServerFrame(hello=pb.Hello(
            server_id=self.server_id, epoch=self.hosting.epoch, max_message_size=self.config.max_message_size,
            file_dir=self.files.path if self.files else "")).SerializeToString())
        reader = asyncio.ensure_future(self._read_session(request_iterator, session))
        reader.add_done_callback(lambda _: session.wake.set())
        wake = session.wake
        budget = _frames.frame_budget(self.config.max_message_size)
        outbox = session.outbox
        try:
            while True:
                if not outbox:
                    if session.closed or reader.done():
                        break
                    await wake.wait()
                wake.clear()
                while outbox:
                    batch = _frames.take_batch(outbox, entry_cost, budget)
                    await context.write(_frames.server_frame([reply for reply, _ in batch]))
                    session.written(sum(cost for _, cost in batch))
                    if session.pushes:
                        self._check_pause()   # written during a stop that just ended: hold the releases
                        session.released(batch)
        finally:
            self._check_pause()
            session.close()
            self.sessions.discard(session)
            self.credentials.session_closed(ticket)
            reader.cancel()

    async def _read_session(self, request_iterator: Any, session: ClientSession) -> None:
        hosting = self.hosting
        try:
            async for frame in request_iterator:
                if self.pauses.overdue():   # this process did not run for a while: find out why first
                    self.pauses.assess()
                for call in frame.calls:
                    hosting.dispatch(call, session)
                for cancel in frame.cancels:
                    hosting.cancel(cancel)
                if self.registration is not None:
                    self.registration.load_changed()
                if not session.room.is_set():
                    log.debug("session backlog %d bytes over %d: not reading its calls until it drains",
                              session.backlog, session.budget)
                    await session.room.wait()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - one bad stream must not hurt the server
            log.warning("session ended by an error", exc_info=True)
