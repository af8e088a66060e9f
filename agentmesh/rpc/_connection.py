"""Channels to agent servers: one multiplexed session stream per server per process."""
from __future__ import annotations

import asyncio
import collections
import logging
import weakref
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .. import _tls, errors
from .._config import settings
from ..v1 import agent_server_pb2 as pb
from ..v1 import agent_server_pb2_grpc as pb_grpc
from . import _loop, _wire
from ._result import CallSlot

log = logging.getLogger("agentmesh.rpc")

_FRAME_BUDGET_FRACTION = 2  # a frame carries at most max_message_size / 2 of payload
_REFUSED = (pb.CAPACITY, pb.CLASS_NOT_FOUND)


def _status_error(exc: grpc.aio.AioRpcError, address: str, what: str) -> Exception:
    """Turn a gRPC status into the agentmesh error it means."""
    code = exc.code()
    detail = exc.details() or code.name
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return errors.AuthenticationError(f"agent server {address} refused {what}: {detail}")
    if code == grpc.StatusCode.FAILED_PRECONDITION and "version" in detail:
        return errors.VersionMismatchError(f"agent server {address}: {detail}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if what == "agent creation":
            return errors.CapacityError(f"agent server {address} is full: {detail}")
        return errors.MessageTooLargeError(f"agent server {address}: {detail}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        hint = (" (does one side use TLS and the other not? see tls_ca / tls_cert)"
                if "Socket closed" in detail or "handshake" in detail.lower() else "")
        return errors.ServerUnavailableError(f"agent server {address} is unreachable ({what}): {detail}{hint}")
    if what == "agent creation":
        if code == grpc.StatusCode.NOT_FOUND:
            return errors.ClassNotFoundError(f"agent server {address}: {detail}")
        return errors.AgentCreationError(f"agent server {address}: {detail}")
    return errors.AgentMeshError(f"agent server {address} ({what}): {code.name}: {detail}")


def channel_options(max_message_size: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_size + 64 * 1024),
        ("grpc.max_receive_message_length", max_message_size + 64 * 1024),
        *_wire.CLIENT_KEEPALIVE_OPTIONS,
    ]


def make_channel(address: str) -> grpc.aio.Channel:
    """An aio channel to address with agentmesh's options and TLS when configured."""
    options = channel_options(settings.max_message_size)
    if (settings.tls_ca or settings.tls_cert) and not _tls.is_plaintext_child(address):
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(settings.tls_ca),
            private_key=_read(settings.tls_key),
            certificate_chain=_read(settings.tls_cert),
        )
        return grpc.aio.secure_channel(address, creds, options=options)
    return grpc.aio.insecure_channel(address, options=options)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class Connection:
    """A session with one agent server: calls go out in batches, replies come back in batches."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.server_id = ""
        self.epoch = 0
        self.max_message_size = settings.max_message_size
        self.metadata = _wire.call_metadata(settings.client_token())
        self.closed = False
        self.draining = False
        self.proxies: weakref.WeakSet = weakref.WeakSet()   # proxies whose agent lives on this server
        self.pending: dict[str, CallSlot] = {}
        self._outbox: collections.deque[CallSlot] = collections.deque()
        self._wake_scheduled = False
        self._wake: asyncio.Event | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.AgentServerStub | None = None
        self._stream: Any = None
        self._tasks: list[asyncio.Task] = []
        self._loop = _loop.get_loop()

    @property
    def stub(self) -> pb_grpc.AgentServerStub:
        assert self._stub is not None
        return self._stub

    async def open(self, timeout: float) -> None:
        """Connect and read the server's Hello; raise a clear error if refused."""
        self._channel = make_channel(self.address)
        self._stub = pb_grpc.AgentServerStub(self._channel)
        self._wake = asyncio.Event()
        self._stream = self._stub.Session(metadata=self.metadata, wait_for_ready=False)
        try:
            first = await asyncio.wait_for(self._stream.read(), timeout)
        except grpc.aio.AioRpcError as exc:
            await self._channel.close()
            raise _status_error(exc, self.address, "the session") from None
        except asyncio.TimeoutError:
            await self._channel.close()
            raise errors.ServerUnavailableError(
                f"agent server {self.address} did not answer within {timeout} s") from None
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await self._channel.close()
            raise errors.ServerUnavailableError(f"agent server {self.address} closed the session at once")
        self.server_id = first.hello.server_id
        self.epoch = first.hello.epoch
        if first.hello.max_message_size:
            self.max_message_size = min(self.max_message_size, first.hello.max_message_size)
        self._tasks = [asyncio.ensure_future(self._reader()), asyncio.ensure_future(self._writer()),
                       asyncio.ensure_future(self._watch_health())]

    # -- calls --------------------------------------------------------------
    def submit(self, slot: CallSlot) -> None:
        """Queue a call from any thread; the writer sends everything queued in one frame."""
        if self.closed:
            if slot.owner is not None:
                slot.owner._server_lost(self, [slot], "the session had ended")
            else:
                self._lost_one(slot, "the connection is closed")
            return
        slot.conn = self
        self.pending[slot.call.call_id] = slot
        self._outbox.append(slot)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            if _loop.in_loop_thread():
                self._wake.set()  # type: ignore[union-attr]
            else:
                self._loop.call_soon_threadsafe(self._wake.set)  # type: ignore[union-attr]

    async def _writer(self) -> None:
        wake = self._wake
        assert wake is not None
        budget = max(1, self.max_message_size // _FRAME_BUDGET_FRACTION)
        try:
            while not self.closed:
                await wake.wait()
                wake.clear()
                self._wake_scheduled = False
                outbox = self._outbox
                while outbox:
                    frame = pb.ClientFrame()
                    size = 0
                    while outbox and (size == 0 or size + len(outbox[0].call.payload) < budget):
                        call = outbox.popleft().call
                        size += len(call.payload) + 64
                        frame.calls.append(call)
                    await self._stream.write(frame)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            log.debug("session writer to %s ended: %s", self.address, exc)
            await self._on_lost(f"write failed: {exc}")
        except asyncio.CancelledError:
            pass

    async def _reader(self) -> None:
        reason = "the server closed the session"
        try:
            while True:
                frame = await self._stream.read()
                if frame is grpc.aio.EOF:
                    break
                pending = self.pending
                for reply in frame.replies:
                    slot = pending.pop(reply.call_id, None)
                    if slot is None:
                        continue
                    if reply.state:
                        slot.owner._note_checkpoint(reply)
                        reply.ClearField("state")
                    owner = slot.owner
                    if owner is not None and reply.status != pb.OK:
                        if reply.status == pb.STALE_EPOCH:
                            owner._server_lost(self, [slot], f"fenced ({reply.error_message})")
                            continue
                        if reply.status in _REFUSED and owner._refused(self, slot, reply):
                            continue
                    if reply.status == pb.OK and owner is not None and slot.call.method == "__create__":
                        owner._on_created(self, reply)
                    slot.set(reply)
        except grpc.aio.AioRpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            return
        await self._on_lost(reason)

    async def _on_lost(self, reason: str, notify: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if _pool.get(self.address) is self:
            del _pool[self.address]
        log.info("session with agent server %s ended: %s", self.address, reason)
        if self._wake is not None:
            self._wake.set()
        slots = list(self.pending.values())
        self.pending.clear()
        self._outbox.clear()
        by_owner: dict[Any, list[CallSlot]] = {proxy: [] for proxy in list(self.proxies)} if notify else {}
        for slot in slots:
            if slot.owner is not None and notify:
                by_owner.setdefault(slot.owner, []).append(slot)
            else:
                self._lost_one(slot, reason)
        for owner, owned in by_owner.items():
            owner._server_lost(self, owned, reason)
        if self._channel is not None:
            await self._channel.close()

    async def _watch_health(self) -> None:
        """Follow the server's health: NOT_SERVING means it drains, so its agents move now."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            async for response in stub.Watch(health_pb2.HealthCheckRequest(service=_wire.SERVICE_NAME)):
                if response.status == health_pb2.HealthCheckResponse.NOT_SERVING and not self.draining:
                    self.draining = True
                    log.info("agent server %s is draining; moving its agents", self.address)
                    for proxy in list(self.proxies):
                        proxy._server_lost(self, [], "the server is draining")
                    self.close_if_unused()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            return

    def close_if_unused(self) -> None:
        """Close a draining session once no proxy and no call needs it (I/O loop or any thread)."""
        if self.draining and not self.closed and not self.proxies and not self.pending:
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.close()))

    def _lost_one(self, slot: CallSlot, reason: str) -> None:
        fail(slot, pb.UNAVAILABLE, f"agent server {self.address} was lost: {reason}",
             "ServerUnavailableError")

    async def close(self) -> None:
        """Close the session; pending calls fail, proxies stay bound (they reconnect on next use)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._on_lost("closed by this process", notify=False)


def fail(slot: CallSlot, status: int, message: str, error_type: str = "") -> None:
    """Complete a call with an error reply made on this side (thread-safe)."""
    reply = pb.Reply(call_id=slot.call.call_id, status=status, error_message=message, error_type=error_type)
    if _loop.in_loop_thread():
        slot.set(reply)
    else:
        _loop.get_loop().call_soon_threadsafe(slot.set, reply)


_pool: dict[str, Connection] = {}
_connecting: dict[str, asyncio.Future] = {}


async def get_connection(address: str, timeout: float | None = None) -> Connection:
    """The open session to address, opening one if needed (on the I/O loop)."""
    conn = _pool.get(address)
    if conn is not None and not conn.closed:
        return conn
    waiting = _connecting.get(address)
    if waiting is not None:
        return await asyncio.shield(waiting)
    fut = asyncio.get_running_loop().create_future()
    _connecting[address] = fut
    try:
        conn = Connection(address)
        await conn.open(timeout if timeout is not None else settings.connect_timeout)
        _pool[address] = conn
        fut.set_result(conn)
        return conn
    except BaseException as exc:
        fut.set_exception(exc)
        fut.exception()  # mark retrieved
        raise
    finally:
        _connecting.pop(address, None)


def closed_connection(address: str) -> Connection:
    """A connection that is already lost: calls submitted to it go to their proxy's failover."""
    conn = Connection(address)
    conn.closed = True
    return conn


def connect(address: str, timeout: float | None = None) -> Connection:
    """get_connection from a user thread."""
    conn = _pool.get(address)
    if conn is not None and not conn.closed:
        return conn
    return _loop.run_sync(get_connection(address, timeout))


#: server_id -> the in-process server's fetch coroutine, so local placeholders skip the network
local_servers: dict[str, Any] = {}


async def fetch(ref: tuple) -> pb.Reply:
    """The reply of a call made by someone else, from the server that produces it.

    If that server is gone, the call's agent has moved (its owner replays the
    call under the same id): follow the agent's registry record there.
    """
    server_id, address, agent_id, call_id = ref
    while True:
        reply = await _fetch_from(server_id, address, agent_id, call_id)
        if reply.status != pb.UNAVAILABLE or not settings.registry:
            return reply
        from ..discovery._placement import locate_async

        moved_to = await locate_async(agent_id, avoid=address)
        if not moved_to:
            return reply
        server_id, address = "", moved_to


async def server_gone(server_id: str) -> None:
    """The registry says server_id's key vanished: if we talk to it and it does not answer, it is lost."""
    for conn in list(_pool.values()):
        if conn.server_id != server_id or conn.closed or conn.draining:
            continue
        try:
            response = await health_pb2_grpc.HealthStub(conn._channel).Check(
                health_pb2.HealthCheckRequest(service=_wire.SERVICE_NAME), timeout=0.3)
        except grpc.aio.AioRpcError:
            await conn._on_lost("its registry key expired and it does not answer")
            continue
        if response.status == health_pb2.HealthCheckResponse.NOT_SERVING:
            conn.draining = True


async def _fetch_from(server_id: str, address: str, agent_id: str, call_id: str) -> pb.Reply:
    local = local_servers.get(server_id)
    if local is not None:
        return await local.fetch_result(call_id, agent_id)
    try:
        conn = await get_connection(address)
        return await conn.stub.FetchResult(pb.FetchRequest(call_id=call_id, agent_id=agent_id),
                                           metadata=conn.metadata)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return pb.Reply(call_id=call_id, status=pb.EXPIRED, error_type="ResultExpiredError",
                            error_message=exc.details() or "result not found")
        return pb.Reply(call_id=call_id, status=pb.UNAVAILABLE, error_type="ServerUnavailableError",
                        error_message=f"could not fetch result {call_id} from {address}: "
                                      f"{exc.code().name}: {exc.details()}")
    except errors.AgentMeshError as exc:
        return pb.Reply(call_id=call_id, status=pb.UNAVAILABLE, error_type=type(exc).__name__,
                        error_message=str(exc))


async def _close_all() -> None:
    for conn in list(_pool.values()):
        await conn.close()


_loop.on_exit(_close_all)
