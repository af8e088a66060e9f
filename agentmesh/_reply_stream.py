"""ReplyStream: the placeholder a generator method returns at once, whose items arrive as the agent yields them."""
from __future__ import annotations

import asyncio
import collections
from typing import Any

import grpc

from . import _status, errors
from ._client.slot import CallSlot, ResultRef, decode_reply, raised
from ._runtime import Runtime, default_runtime
from .v1 import agent_server_pb2 as pb


class ReplyStream:
    """The items a generator method yields, as the agent yields them: iterate it once, ``for`` or ``async for``.

    The proxy returns it at once. It pickles, pending or not; whoever unpickles
    it (an agent on another server) reads the items straight from the server
    that makes them. If that server dies mid-stream, StreamBrokenError says how
    many items had arrived (a stream does not resume).
    """

    __slots__ = ("_slot", "_ref", "_method", "_runtime", "_reader", "_address", "_buffer", "_ended", "items", "_name")

    def __init__(self, slot: CallSlot | None = None, ref: ResultRef | None = None, method: str = "",
                 runtime: Runtime | None = None) -> None:
        self._slot = slot          # the call, made by this process
        self._ref = ref            # or where it runs
        self._method = method
        self._runtime = runtime
        self._reader: Any = None   # the ReadStream call, once open
        self._address = ref.address if ref else ""
        self._buffer: collections.deque[bytes] = collections.deque()   # items received, not yet taken
        self._ended: bool | BaseException = False   # True at the end; how it failed, to raise after the items
        self.items = 0             # items taken so far
        self._name = getattr(slot.owner, "name", "") if slot is not None else ""   # errors name the agent

    def _where(self) -> ResultRef:
        if self._ref is not None:
            return self._ref
        return self._slot.ref()    # type: ignore[union-attr]

    async def _open(self, runtime: Runtime) -> None:
        """Start reading (I/O loop): from the session the call was answered on, or the ref's server."""
        slot = self._slot
        if slot is not None:
            reply = await slot.wait_async()
            if not reply.stream:
                value = slot.value()
                error = raised(value)
                raise error if error is not None else errors.AgentCallError(
                    f"{slot.call.method}() on agent {slot.call.agent_id} returned {type(value).__name__}, not a "
                    f"generator: nothing to stream", agent_id=slot.call.agent_id, method=slot.call.method)
            conn = slot.conn
            agent_id, call_id = slot.call.agent_id, slot.call.call_id
        else:
            ref = self._where()
            agent_id, call_id = ref.agent_id, ref.call_id
            conn = await runtime.pool.get(ref.address, expect=ref.server_id)
        self._address = conn.address
        self._reader = conn.stream("ReadStream", pb.StreamRequest(call_id=call_id, agent_id=agent_id))

    async def _fill(self, runtime: Runtime) -> None:
        """Read the next message of the stream into the buffer, or learn how it ended (I/O loop)."""
        if self._reader is None:
            await self._open(runtime)
        agent_id = self._where().agent_id
        try:
            message = await self._reader.read()
        except grpc.aio.AioRpcError as exc:
            # a lost server shows as UNAVAILABLE, or as CANCELLED when its session closed the channel first
            if _status.status_of(exc) is not None or exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                                                          grpc.StatusCode.CANCELLED):
                raise _status.rpc_error(exc, self._address, f"the stream of {self._method}()") from None
            message, why = None, f"{exc.code().name}: {exc.details()}"
        else:
            why = "it ended without saying how"
        if message is None or message is grpc.aio.EOF:
            label, items = errors.agent_label(agent_id, self._name), self.items + len(self._buffer)
            self._ended = errors.StreamBrokenError(f"the stream of {self._method}() on {label} broke after {items} "
                                                   f"item(s): agent server {self._address} was lost ({why})", items)
        elif message.HasField("end"):
            self._ended = (_status.reply_error(message.end, agent_id, self._method, self._name)
                           if message.end.status else True)
        else:
            self._buffer.extend(message.items)

    def _take(self) -> tuple[bool, Any]:
        """(True, the next item) from the buffer, else (False, None) at the end; raises how a stream failed."""
        if self._buffer:
            self.items += 1
            value = decode_reply(pb.Reply(status=pb.OK, payload=self._buffer.popleft()), self._where().agent_id,
                                 self._method, self._name)
            error = raised(value)
            if error is not None:
                raise error
            return True, value
        if isinstance(self._ended, BaseException):
            raise self._ended
        return False, None

    def __iter__(self) -> "ReplyStream":
        return self

    def __next__(self) -> Any:
        if not self._buffer and not self._ended:
            runtime = self._runtime or default_runtime()
            runtime.run(self._fill(runtime))
        more, value = self._take()
        if not more:
            raise StopIteration
        return value

    def __aiter__(self) -> "ReplyStream":
        return self

    async def __anext__(self) -> Any:
        if not self._buffer and not self._ended:
            runtime = self._runtime or default_runtime()
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._fill(runtime), runtime.loop.get()))
        more, value = self._take()
        if not more:
            raise StopAsyncIteration
        return value

    def __reduce__(self):
        return (_remote_stream, (self._where(), self._method))

    def __repr__(self) -> str:
        return f"<ReplyStream of {self._method}() on agent {self._where().agent_id}, {self.items} item(s) read>"


def _remote_stream(ref: ResultRef, method: str) -> ReplyStream:
    return ReplyStream(ref=ref, method=method)
