"""AsyncResult: the placeholder an asynchronous call returns at once, which waits for or fetches the value.

It is the client's; the server keeps the values themselves in ``server/_results.py``."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Generator, Mapping, NamedTuple, Protocol

from . import _codec, errors
from ._client import files
from ._client.connection import Connection
from ._client.slot import CallSlot, ResultRef, decode_reply, raised
from ._runtime import Runtime, default_runtime
from ._tracing import end_span

log = logging.getLogger("agentmesh")


class Retrying(Protocol):
    """A retry strategy (agentmesh.rpc.retry_strategy): calls func again while it fails."""

    def retry(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """func's value, once a try succeeds."""


class WaitPolicy(NamedTuple):
    """How a proxy's placeholders wait for their value: its ``max_timeout_seconds`` and ``retry_strategy``."""

    max_timeout_seconds: float | None   # how long one wait may last (None: as long as the call runs)
    retry_strategy: Retrying | None     # how often to wait again after a wait timed out (None: never)


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
        object.__setattr__(self, "_ref", ref)   # where a remote call runs (with no slot)
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
            retry = policy.retry_strategy
            if retry is not None:
                return retry.retry(self._result_within, policy.max_timeout_seconds,
                                   expect_exception_type=TimeoutError)
            timeout = policy.max_timeout_seconds
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
                await asyncio.wait_for(arrived, policy.max_timeout_seconds if policy is not None else None)
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
        ref = self._ref
        if self._resolved is None:    # a remote placeholder fetches its value
            runtime = self._runtime or default_runtime()
            tracing = runtime.tracing   # the span starts here, a child of this thread's current span
            traced = tracing.start_fetch(ref.agent_id, ref.call_id) if tracing is not None else None
            reply = runtime.run(_fetch(runtime, ref, traced), timeout)
            object.__setattr__(self, "_resolved", (decode_reply(reply, ref.agent_id, "result"),))
        return self._with_files(self._resolved[0], (self._runtime or default_runtime()).pool.session_of(ref.address))

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
            ref = self._ref
            runtime = self._runtime or default_runtime()
            tracing = runtime.tracing
            traced = (tracing.start_fetch(ref.agent_id, ref.call_id, dict(trace))
                      if tracing is not None and trace else None)
            reply = await _fetch(runtime, ref, traced)
            object.__setattr__(self, "_resolved", (decode_reply(reply, ref.agent_id, "result"),))

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
        return self._slot.call.call_id if self._slot is not None else self._ref.call_id

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
