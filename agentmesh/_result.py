"""Placeholders: the AsyncResult an asynchronous call returns at once, the ReplyStream a generator method does."""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable, Generator, Mapping, Protocol

import grpc

from . import _codec, _status, errors
from ._client import files
from ._client.connection import Connection
from ._client.pool import ResultRef
from ._client.slot import CallSlot, decode_reply, raised
from ._runtime import Runtime, default_runtime
from ._tracing import end_span
from .v1 import agent_server_pb2 as pb

log = logging.getLogger("agentmesh")


class Retrying(Protocol):
    """A retry strategy (agentmesh.rpc.retry_strategy): calls func again while it fails."""

    def retry(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """func's value, once a try succeeds."""


#: (seconds one wait for a result may last or None, the retry strategy or None)
WaitPolicy = tuple["float | None", "Retrying | None"]


class AsyncResult:
    """Stands for the value of an asynchronous call until it arrives.

    Touching any attribute, ``str()``, ``==`` or ``.result()`` waits for the
    value. It pickles while pending; whoever unpickles it fetches the value
    straight from the server that produces it.
    """

    __slots__ = ("_slot", "_ref", "_resolved", "_runtime", "_policy")

    def __init__(self, slot: CallSlot | None = None, ref: ResultRef | None = None,
                 runtime: Runtime | None = None, policy: WaitPolicy | None = None) -> None:
        object.__setattr__(self, "_slot", slot)
        object.__setattr__(self, "_ref", ref)   # (server_id, address, agent_id, call_id)
        object.__setattr__(self, "_resolved", None)
        object.__setattr__(self, "_runtime", runtime)   # fetches a remote value; None: the default one
        object.__setattr__(self, "_policy", policy)     # the proxy's max_timeout_seconds and retry_strategy

    # -- resolving --------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """The value (waiting for it); raises AgentCallError if the call failed.

        Without timeout, the proxy's ``max_timeout_seconds`` bounds each wait and
        its ``retry_strategy`` decides how often to wait again (TimeoutError when
        it gives up); a proxy with neither waits as long as the call runs.
        """
        policy = self._policy
        if timeout is None and policy is not None:
            wait_for, retry = policy
            if retry is not None:
                return retry.retry(self._result_within, wait_for, expect_exception_type=TimeoutError)
            timeout = wait_for
        return self._result_within(timeout)

    def _result_within(self, timeout: float | None) -> Any:
        value = self._raw_value(timeout)
        error = raised(value)
        if error is not None:
            raise error
        if isinstance(value, AsyncResult):  # the agent returned another placeholder
            return value._result_within(timeout)
        return value

    def done(self) -> bool:
        """True once the value is here (no waiting)."""
        slot = self._slot
        return slot.done() if slot is not None else self._resolved is not None

    def __await__(self) -> Generator[Any, None, Any]:
        """``await result``: the value, without blocking the caller's event loop (any loop). Cancelling the
        await (or its wait_for timing out) cancels the call on its server too."""
        return self._value_async().__await__()

    async def _value_async(self) -> Any:
        slot = self._slot
        if slot is not None and not slot.done():
            policy = self._policy
            loop = asyncio.get_running_loop()
            arrived = loop.create_future()
            slot.notify(loop, arrived)
            try:
                await asyncio.wait_for(arrived, policy[0] if policy is not None else None)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                slot.cancel()
                raise
        elif slot is None and self._resolved is None:
            runtime = self._runtime or default_runtime()
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._resolve_async(), runtime.loop.get()))
        value = self._raw_value(None)
        error = raised(value)
        if error is not None:
            raise error
        if isinstance(value, AsyncResult):   # the agent returned another placeholder
            return await value
        return value

    def _raw_value(self, timeout: float | None) -> Any:
        slot = self._slot
        if slot is not None:
            slot.wait(timeout)
            return self._with_files(slot.value(), slot.conn)
        if self._resolved is None:    # a remote placeholder fetches its value
            runtime = self._runtime or default_runtime()
            tracing = runtime.tracing   # the span starts here, a child of this thread's current span
            traced = tracing.start_fetch(self._ref[2], self._ref[3]) if tracing is not None else None
            reply = runtime.run(_fetch(runtime, self._ref, traced), timeout)
            object.__setattr__(self, "_resolved", (decode_reply(reply, self._ref[2], "result"),))
        return self._with_files(self._resolved[0], (self._runtime or default_runtime()).pool.session_of(self._ref[1]))

    def _with_files(self, value: Any, conn: Any) -> Any:
        """value, its urls under the server's file root swapped for local copies (once; a failure is a warning)."""
        if not isinstance(conn, Connection) or not files.names_files(value, conn.file_dir):
            return value
        runtime = self._runtime or default_runtime()
        try:
            return runtime.run(files.localize(value, conn, runtime.downloads.folder(runtime.settings.download_dir)))
        except (OSError, errors.AgentMeshError) as exc:
            log.warning("agentmesh: the reply of call %s names a file on %s that could not be copied here, so its "
                        "url stays the server's: %s", self.call_id, conn.address, exc)
            return value

    async def _resolve_async(self, trace: Mapping[str, str] | None = None) -> None:
        """Fetch a remote value on the I/O loop, so no thread waits for it; traced as a child of trace (the
        context of the call that needs the value) when this process traces."""
        if self._slot is not None:
            await self._slot.wait_async()
            return
        if self._resolved is None:
            runtime = self._runtime or default_runtime()
            tracing = runtime.tracing
            traced = (tracing.start_fetch(self._ref[2], self._ref[3], dict(trace))
                      if tracing is not None and trace else None)
            reply = await _fetch(runtime, self._ref, traced)
            object.__setattr__(self, "_resolved", (decode_reply(reply, self._ref[2], "result"),))

    # -- AgentScope's names ----------------------------------------------------
    @property
    def _ready(self) -> bool:
        """AgentScope's flag: True once the value is here."""
        return self.done()

    def _fetch_result(self) -> None:
        """AgentScope's explicit fetch: wait for the value; raise if the call failed."""
        self.result()

    def update_value(self) -> "AsyncResult":
        """Wait for the value (AgentScope's older name for it); raises if the call failed."""
        self.result()
        return self

    @property
    def call_id(self) -> str:
        return self._slot.call.call_id if self._slot is not None else self._ref[3]

    # -- pickling ---------------------------------------------------------
    def __reduce__(self):
        if self.done():
            value = self._raw_value(None)
            if raised(value) is None:
                return (_identity, (value,))
        slot = self._slot
        return (_rebuild, (slot.ref() if slot is not None else self._ref,))

    # -- behaving like the value -----------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(self.result(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.result(), name, value)

    def __str__(self) -> str:
        return str(self.result())

    def __repr__(self) -> str:
        if not self.done():
            return f"<AsyncResult {self.call_id} pending>"
        return repr(self.result())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            other = other.result()
        return self.result() == other

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.result())

    def __bool__(self) -> bool:
        return bool(self.result())

    def __len__(self) -> int:
        return len(self.result())

    def __iter__(self):
        return iter(self.result())

    def __contains__(self, item: object) -> bool:
        return item in self.result()

    def __getitem__(self, key: Any) -> Any:
        return self.result()[key]

    def __int__(self) -> int:
        return int(self.result())

    def __float__(self) -> float:
        return float(self.result())

    def __add__(self, other: Any) -> Any:
        return self.result() + other

    def __radd__(self, other: Any) -> Any:
        return other + self.result()


class ReplyStream:
    """The items a generator method yields, as the agent yields them: iterate it once, ``for`` or ``async for``.

    The proxy returns it at once. It pickles, pending or not; whoever unpickles
    it (an agent on another server) reads the items straight from the server
    that makes them. If that server dies mid-stream, StreamBrokenError says how
    many items had arrived (a stream does not resume).
    """

    __slots__ = ("_result", "_ref", "_method", "_runtime", "_reader", "_address", "_buffer", "_ended", "items", "_name")

    def __init__(self, result: AsyncResult | None = None, ref: ResultRef | None = None, method: str = "",
                 runtime: Runtime | None = None) -> None:
        self._result = result      # the call, made by this process
        self._ref = ref            # or where it runs: (server_id, address, agent_id, call_id)
        self._method = method
        self._runtime = runtime
        self._reader: Any = None   # the ReadStream call, once open
        self._address = ref[1] if ref else ""
        self._buffer: collections.deque[bytes] = collections.deque()   # items received, not yet taken
        self._ended: bool | BaseException = False   # True at the end; how it failed, to raise after the items
        self.items = 0             # items taken so far
        self._name = getattr(result._slot.owner, "name", "") if result is not None else ""   # errors name the agent

    def _where(self) -> ResultRef:
        if self._ref is not None:
            return self._ref
        return self._result._slot.ref()    # type: ignore[union-attr]

    async def _open(self, runtime: Runtime) -> None:
        """Start reading (I/O loop): from the session the call was answered on, or the ref's server."""
        result = self._result
        if result is not None:
            slot = result._slot
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
            server_id, address, agent_id, call_id = self._ref     # type: ignore[misc]
            conn = await runtime.pool.get(address, expect=server_id)
        self._address = conn.address
        self._reader = conn.stub.ReadStream(pb.StreamRequest(call_id=call_id, agent_id=agent_id),
                                            metadata=conn.metadata)

    async def _fill(self, runtime: Runtime) -> None:
        """Read the next message of the stream into the buffer, or learn how it ended (I/O loop)."""
        if self._reader is None:
            await self._open(runtime)
        agent_id = self._where()[2]
        try:
            message = await self._reader.read()
        except grpc.aio.AioRpcError as exc:
            if _status.status_of(exc) is not None or exc.code() != grpc.StatusCode.UNAVAILABLE:
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
            value = decode_reply(pb.Reply(status=pb.OK, payload=self._buffer.popleft()), self._where()[2],
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
        return f"<ReplyStream of {self._method}() on agent {self._where()[2]}, {self.items} item(s) read>"


def _remote_stream(ref: ResultRef, method: str) -> ReplyStream:
    return ReplyStream(ref=ref, method=method)


async def _fetch(runtime: Runtime, ref: ResultRef, traced: tuple[Any, dict[str, str]] | None) -> Any:
    """A remote placeholder's reply; traced: (its span, the context to send), ended with the reply."""
    if traced is None:
        return await runtime.pool.fetch(ref)
    span, carrier = traced
    reply = None
    try:
        reply = await runtime.pool.fetch(ref, carrier)
        return reply
    finally:
        end_span(span, reply)


async def resolve(placeholder: AsyncResult, trace: Mapping[str, str] | None = None) -> None:
    """Have placeholder's value here (I/O loop), no thread waiting: for the server, before a call whose arguments
    hold it runs; trace: that call's trace context. AsyncResult's own names are its value's, so this is no method."""
    await placeholder._resolve_async(trace)


def _identity(value: Any) -> Any:
    return value


#: a pickle that holds a placeholder names this module (for _rebuild)
_MODULE = __name__.encode()


def _rebuild(ref: ResultRef) -> AsyncResult:
    return AsyncResult(ref=ref)


def loads_collecting(data: bytes, runtime: Runtime | None = None) -> tuple[Any, list[AsyncResult]]:
    """Unpickle, also returning the pending placeholders found inside (they fetch through runtime)."""
    if _MODULE not in data:    # no placeholder can be inside: the C unpickler alone (the usual call)
        return _codec.loads(data), []
    found: list[AsyncResult] = []

    def collect(ref: ResultRef) -> AsyncResult:
        placeholder = AsyncResult(ref=ref, runtime=runtime)
        found.append(placeholder)
        return placeholder

    return _codec.loads_replacing(data, {(__name__, "_rebuild"): collect}), found
