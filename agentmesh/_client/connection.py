"""A session with one agent server: calls go out in batches, replies come back in batches."""
from __future__ import annotations

import asyncio
import collections
import logging
import weakref
from typing import Any, Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from google.protobuf.message import Message

from .. import _frames, _metrics, _protocol, _status, errors
from .._loop import IoLoop
from ..v1 import agent_server_pb2 as pb
from ..v1 import agent_server_pb2_grpc as pb_grpc
from .dialing import Dialing
from .handshake import handshake
from .slot import CallOwner, CallSlot

log = logging.getLogger("agentmesh.rpc")

_REFUSED = (pb.CAPACITY, pb.CLASS_NOT_FOUND, pb.CLASS_NOT_SENT)


def _call_cost(slot: CallSlot) -> int:
    return slot.size


def fail(loop: IoLoop, slot: CallSlot, status: int, message: str) -> None:
    """Complete a call with an error reply made on this side (any thread)."""
    loop.call_soon(slot.set, _status.refusal(slot.call.call_id, status, message))


class Connection:
    """The client's end of one multiplexed session stream to an agent server (lives on the I/O loop).

    The server's end of the same stream is its session class in ``server/_outbox.py``.
    """

    def __init__(self, address: str, loop: IoLoop, dialing: Dialing,
                 on_closed: Callable[["Connection"], None] = lambda conn: None, namespace: str | None = None,
                 expect: str = "") -> None:
        self.address = address
        self.server_id = ""
        self.epoch = 0
        self.max_message_size = dialing.max_message_size
        self.file_dir = ""   # the server's file root (Hello), whose files a reply's Msg.url may name
        self.namespace, self._key = dialing.credentials(address, namespace)
        self._proof_optional = dialing.proof_optional(address)
        self.expect = expect
        self._metadata = _protocol.call_metadata()
        self.closed = False
        self.draining = False
        self._owners: weakref.WeakSet[CallOwner] = weakref.WeakSet()   # owners whose agent lives on this server
        #: the proxies that created their agent here, by agent id: checkpoints pushed by the server go to them
        self._creators: weakref.WeakValueDictionary[str, CallOwner] = weakref.WeakValueDictionary()
        self._pending: dict[str, CallSlot] = {}
        self.fetching = 0   # fetches of results in flight on this session's channel (Pool.fetch)
        self._dialing = dialing
        self._on_closed = on_closed
        self._loop = loop
        self._outbox: collections.deque[CallSlot] = collections.deque()
        self._cancels: list[pb.Cancel] = []     # cancels of calls given up on, sent after the queued calls
        self._wake_scheduled = False
        self._wake: asyncio.Event | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.AgentServerStub | None = None
        self._stream: Any = None
        self._tasks: list[asyncio.Task] = []
        self.metrics: Any = None    # this process's metrics, or None (off)

    async def open(self, timeout: float) -> None:
        """Authenticate both ends, then open the session and read the server's Hello; a clear error if refused."""
        self._channel = self._dialing.channel(self.address)
        self._stub = pb_grpc.AgentServerStub(self._channel)
        self._wake = asyncio.Event()
        try:
            tls = self._dialing.tls and not self._dialing.plaintext(self.address)
            answer, self._metadata = await handshake(self._stub, self.address, self._key, self.namespace,
                                                    self.expect, timeout, self._proof_optional, tls,
                                                    tls and bool(self._dialing.tls_cert))
        except BaseException:
            await self._channel.close()
            raise
        self.server_id = answer.server_id
        # frames go out encoded by hand (_frames.client_frame), so a large payload is never copied into a message
        self._stream = self._channel.stream_stream(
            _protocol.SESSION_METHOD, request_serializer=None, response_deserializer=pb.ServerFrame.FromString,
            _registered_method=True)(metadata=self._metadata, wait_for_ready=False)
        try:
            first = await asyncio.wait_for(self._stream.read(), timeout)
        except grpc.aio.AioRpcError as exc:
            await self._channel.close()
            raise _status.rpc_error(exc, self.address, "the session") from None
        except asyncio.TimeoutError:
            await self._channel.close()
            raise errors.ServerUnavailableError(
                f"agent server {self.address} did not answer within {timeout} s") from None
        if first is grpc.aio.EOF or not first.HasField("hello") or first.hello.server_id != self.server_id:
            await self._channel.close()
            raise errors.ServerUnavailableError(f"agent server {self.address} closed the session at once")
        self.epoch = first.hello.epoch
        self.file_dir = first.hello.file_dir
        if first.hello.max_message_size:
            self.max_message_size = min(self.max_message_size, first.hello.max_message_size)
        self._tasks = [asyncio.ensure_future(self._reader()), asyncio.ensure_future(self._writer()),
                       asyncio.ensure_future(self._watch_health())]

    # -- calls --------------------------------------------------------------
    def submit(self, slot: CallSlot) -> None:
        """Queue a call from any thread; the writer sends everything queued in one frame. A call over the size
        limit fails alone (TOO_LARGE), unsent: gRPC would end the session over it, as if the server were lost."""
        if self.closed:
            if slot.owner is not None:   # told later, on the loop: the caller may hold its owner's locks
                self._loop.get().call_soon_threadsafe(slot.owner.on_lost, self, [slot], "the session had ended")
            else:
                self._lost_one(slot, "the connection is closed")
            return
        call, limit = slot.call, self.max_message_size
        if slot.size > limit:
            fail(self._loop, slot, pb.TOO_LARGE, f"{call.method}() on agent {call.agent_id} is {slot.size} "
                 f"bytes, over the limit of {limit} bytes (max_message_size) of agent server {self.address}; not sent")
            return
        slot.conn = self
        if self.metrics is not None and not slot.sent:   # a replay keeps its first send: the caller's wait
            slot.sent = _metrics.now()
        self._pending[slot.call.call_id] = slot
        self._outbox.append(slot)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon(self._wake.set)  # type: ignore[union-attr]

    async def unary(self, method: str, request: Message, *, timeout: float | None = None,
                    metadata: Sequence[tuple[str, str]] = (), what: str = "") -> Any:
        """The answer of the server's unary RPC method with this session's credentials, then metadata (I/O loop); a
        failure raises the agentmesh error it means, naming what (default: method), the refusal as its .status."""
        assert self._stub is not None
        try:
            return await getattr(self._stub, method)(request, metadata=(*self._metadata, *metadata), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            error = _status.rpc_error(exc, self.address, what or method)
            error.status = _status.status_of(exc)
            raise error from None

    def stream(self, method: str, request: Message) -> grpc.aio.UnaryStreamCall:
        """The call of the server's server-streaming RPC method with this session's credentials (I/O loop), to read;
        its failures are gRPC's, for the reader to name."""
        assert self._stub is not None
        return getattr(self._stub, method)(request, metadata=self._metadata)

    # -- owners ---------------------------------------------------------------
    def attach(self, owner: CallOwner, creator: bool = False) -> None:
        """owner's agent lives on this server; creator: owner created it, so the server's checkpoint pushes after
        others' calls go to it."""
        self._owners.add(owner)
        if creator:
            self._creators[owner.agent_id] = owner

    def detach(self, owner: CallOwner, left: bool = True) -> None:
        """owner no longer needs this session (left: its agent left, so a late push from here is no news)."""
        self._owners.discard(owner)
        if left and self._creators.get(owner.agent_id) is owner:
            del self._creators[owner.agent_id]
        self.close_if_unused()

    def has_pending(self, owner: CallOwner) -> bool:
        """Whether a call of owner's awaits its reply here."""
        return any(slot.owner is owner for slot in list(self._pending.values()))

    def cancel(self, slot: CallSlot) -> None:
        """The caller gave up on slot's call (any thread): it is answered as cancelled here at once, and the
        server is told, so it drops the call if not started and cancels it if it is a coroutine."""
        self._loop.get().call_soon_threadsafe(self._cancel, slot)

    def _cancel(self, slot: CallSlot) -> None:
        call = slot.call
        if self._pending.pop(call.call_id, None) is None or self.closed:
            return
        self._cancels.append(pb.Cancel(call_id=call.call_id, agent_id=call.agent_id))
        self._wake.set()  # type: ignore[union-attr]
        slot.set(_status.refusal(call.call_id, pb.UNAVAILABLE, f"{call.method}() on agent {call.agent_id} was "
                                                               f"cancelled by its caller", "CancelledError"))

    async def _writer(self) -> None:
        wake = self._wake
        assert wake is not None
        budget = _frames.frame_budget(self.max_message_size)
        try:
            while not self.closed:
                await wake.wait()
                wake.clear()
                self._wake_scheduled = False
                outbox = self._outbox
                while outbox:
                    batch = _frames.take_batch(outbox, _call_cost, budget)
                    await self._stream.write(_frames.client_frame(batch))
                if self._cancels:     # after the calls they cancel, which may have been in the same batch
                    cancels, self._cancels = self._cancels, []
                    await self._stream.write(pb.ClientFrame(cancels=cancels).SerializeToString())
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
                pending = self._pending
                for reply in frame.replies:
                    slot = pending.pop(reply.call_id, None)
                    if slot is None:           # a checkpoint after someone else's call, pushed to its creator
                        creator = self._creators.get(reply.agent_id) if reply.agent_id else None
                        if creator is not None:
                            creator.on_checkpoint(reply)
                        continue
                    owner = slot.owner
                    if reply.state:            # the state goes to the agent's creator (else the caller)
                        holder = self._creators.get(slot.call.agent_id, owner)
                        if holder is not None:
                            holder.on_checkpoint(reply)
                        if slot.done():        # a stream's final reply, after its first: only its state is news
                            continue
                        reply.ClearField("state")
                    elif slot.done():
                        continue
                    if reply.stream:           # a stream starts: its final reply brings the agent's state
                        pending[reply.call_id] = slot
                    if owner is not None and reply.status != pb.OK:
                        if reply.status == pb.STALE_EPOCH:
                            owner.on_lost(self, [slot], f"fenced ({reply.error_message})", pb.STALE_EPOCH)
                            continue
                        if reply.status in _REFUSED and owner.on_refused(self, slot, reply):
                            continue
                    if reply.status == pb.OK and owner is not None and slot.call.method == "__create__":
                        owner.on_created(self, reply)
                    if self.metrics is not None and slot.sent:
                        self._count(slot, reply)
                    slot.set(reply)
                if self.draining and not pending:   # the last reply a draining server owed us: it may stop now
                    self.close_if_unused()
        except grpc.aio.AioRpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            return
        await self._on_lost(reason)

    def _count(self, slot: CallSlot, reply: pb.Reply) -> None:
        method = slot.call.method
        if method != "__create__":
            cls = getattr(slot.owner, "cls_name", "") or ""
            self.metrics.returned(cls, method, _status.name(reply.status), _metrics.now() - slot.sent)

    async def _on_lost(self, reason: str, notify: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_closed(self)
        log.info("session with agent server %s ended: %s", self.address, reason)
        if self._wake is not None:
            self._wake.set()
        slots = [slot for slot in self._pending.values() if not slot.done()]   # not a stream already answered
        self._pending.clear()
        self._outbox.clear()
        by_owner: dict[CallOwner, list[CallSlot]] = {owner: [] for owner in list(self._owners)} if notify else {}
        for slot in slots:
            if slot.owner is not None and notify:
                by_owner.setdefault(slot.owner, []).append(slot)
            else:
                self._lost_one(slot, reason)
        for owner, owned in by_owner.items():
            owner.on_lost(self, owned, reason)
        if self._channel is not None:
            await self._channel.close()

    async def _watch_health(self) -> None:
        """Follow the server's health: NOT_SERVING means it drains, so its agents move now."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            async for response in stub.Watch(health_pb2.HealthCheckRequest(service=_protocol.SERVICE_NAME),
                                             metadata=self._metadata):
                if response.status == health_pb2.HealthCheckResponse.NOT_SERVING and not self.draining:
                    self.draining = True
                    log.info("agent server %s is draining; moving its agents", self.address)
                    for owner in list(self._owners):
                        owner.on_lost(self, [], "the server is draining")
                    self.close_if_unused()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            return

    async def probe(self, timeout: float) -> bool:
        """Ask the server's health once: False when it does not answer (then the session is lost)."""
        try:
            response = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=_protocol.SERVICE_NAME), metadata=self._metadata,
                timeout=timeout)
        except grpc.aio.AioRpcError:
            if self._channel.get_state() == grpc.ChannelConnectivity.READY:
                # gRPC's threads still answer our keepalive pings without the GIL: the server is busy (an
                # agent holds the GIL), not dead. Keepalive ends the session if that stops.
                log.info("agent server %s does not answer its health check but its connection is alive: busy, "
                         "not lost", self.address)
                return True
            await self._on_lost("its registry key expired and it does not answer")
            return False
        if response.status == health_pb2.HealthCheckResponse.NOT_SERVING:
            self.draining = True
        return True

    def close_if_unused(self) -> None:
        """Close a draining session once no owner, no call and no fetch needs it (any thread)."""
        if self.draining and not self.closed and not self._owners and not self._pending and not self.fetching:
            self._loop.get().call_soon_threadsafe(lambda: asyncio.ensure_future(self.close()))

    def _lost_one(self, slot: CallSlot, reason: str) -> None:
        fail(self._loop, slot, pb.UNAVAILABLE, f"agent server {self.address} was lost: {reason}")

    async def close(self) -> None:
        """Close the session; pending calls fail, owners stay bound (they reconnect on next use)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._on_lost("closed by this process", notify=False)
