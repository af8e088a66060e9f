"""Placeholders: the AsyncResult an asynchronous call returns at once."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from .. import errors
from ..v1 import agent_server_pb2 as pb
from . import _loop, _wire

_MISSING = object()


class CallSlot:
    """One call's reply: set once on the I/O loop, waited on from any thread.

    A lock held from birth and released when the reply lands is the cheapest
    cross-thread wait CPython offers; every waiter passes it on.
    """

    __slots__ = ("call", "owner", "conn", "_lock", "reply", "_callbacks", "_value", "_value_lock")

    def __init__(self, call: pb.Call, owner: Any = None, conn: Any = None) -> None:
        self.call = call
        self.owner = owner          # the RpcObject that made the call (failover replays through it)
        self.conn = conn            # the connection it was last sent on
        self._lock = threading.Lock()
        self._lock.acquire()
        self.reply: pb.Reply | None = None
        self._callbacks: list[Callable[[pb.Reply], None]] | None = None
        self._value: Any = _MISSING
        self._value_lock = threading.Lock()

    def set(self, reply: pb.Reply) -> None:
        """Deliver the reply (I/O loop thread); the first one wins."""
        if self.reply is not None:
            return
        self.reply = reply
        self._lock.release()
        callbacks, self._callbacks = self._callbacks, None
        for cb in callbacks or ():
            cb(reply)

    def done(self) -> bool:
        return self.reply is not None

    def wait(self, timeout: float | None = None) -> pb.Reply:
        """Block until the reply is there."""
        reply = self.reply
        if reply is not None:
            return reply
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(
                f"agentmesh: {self.call.method}() on agent {self.call.agent_id} "
                f"gave no result within {timeout} s")
        self._lock.release()
        return self.reply  # type: ignore[return-value]

    async def wait_async(self) -> pb.Reply:
        """Wait on the I/O loop."""
        if self.reply is not None:
            return self.reply
        fut = asyncio.get_running_loop().create_future()

        def done(reply: pb.Reply) -> None:
            if not fut.done():
                fut.set_result(reply)

        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(done)
        return await fut

    def value(self) -> Any:
        """The unpickled result (decoded once), or raise the remote error."""
        if self._value is _MISSING:
            with self._value_lock:
                if self._value is _MISSING:
                    self._value = decode_reply(self.reply, self.call.agent_id, self.call.method)  # type: ignore[arg-type]
        return self._value


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def decode_reply(reply: pb.Reply, agent_id: str, method: str) -> Any:
    """Unpickle an OK reply; a failed one becomes the exception to raise on use."""
    if reply.status != pb.OK:
        return _Raised(_wire.reply_error(reply, agent_id, method))
    try:
        return _wire.loads(reply.payload)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a payload error
        return _Raised(errors.PayloadError(
            f"result of {method}() on agent {agent_id} could not be unpickled here: "
            f"{type(exc).__name__}: {exc}", agent_id=agent_id, method=method))


class AsyncResult:
    """Stands for the value of an asynchronous call until it arrives.

    Touching any attribute, ``str()``, ``==`` or ``.result()`` waits for the
    value. It pickles while pending; whoever unpickles it fetches the value
    straight from the server that produces it.
    """

    __slots__ = ("_slot", "_ref", "_resolved")

    def __init__(self, slot: CallSlot | None = None, ref: tuple | None = None) -> None:
        object.__setattr__(self, "_slot", slot)
        object.__setattr__(self, "_ref", ref)   # (server_id, address, agent_id, call_id)
        object.__setattr__(self, "_resolved", None)

    # -- resolving --------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """The value (waiting for it); raises AgentCallError if the call failed."""
        value = self._raw_value(timeout)
        if isinstance(value, _Raised):
            raise value.error
        if isinstance(value, AsyncResult):  # the agent returned another placeholder
            return value.result(timeout)
        return value

    def done(self) -> bool:
        """True once the value is here (no waiting)."""
        slot = self._slot
        return slot.done() if slot is not None else self._resolved is not None

    def _raw_value(self, timeout: float | None) -> Any:
        slot = self._slot
        if slot is not None:
            slot.wait(timeout)
            return slot.value()
        if self._resolved is None:
            from . import _connection  # a remote placeholder fetches its value
            reply = _loop.run_sync(_connection.fetch(self._ref), timeout)
            object.__setattr__(self, "_resolved", (decode_reply(reply, self._ref[2], "result"),))
        return self._resolved[0]

    async def _resolve_async(self) -> None:
        """Fetch a remote value on the I/O loop, so no thread waits for it."""
        if self._slot is not None:
            await self._slot.wait_async()
            return
        if self._resolved is None:
            from . import _connection
            reply = await _connection.fetch(self._ref)
            object.__setattr__(self, "_resolved", (decode_reply(reply, self._ref[2], "result"),))

    @property
    def call_id(self) -> str:
        return self._slot.call.call_id if self._slot is not None else self._ref[3]

    # -- pickling ---------------------------------------------------------
    def __reduce__(self):
        if self.done():
            value = self._raw_value(None)
            if not isinstance(value, _Raised):
                return (_identity, (value,))
        slot = self._slot
        if slot is None:
            return (_rebuild, (self._ref,))
        conn = slot.conn
        ref = (conn.server_id if conn else "", conn.address if conn else "",
               slot.call.agent_id, slot.call.call_id)
        return (_rebuild, (ref,))

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


def _identity(value: Any) -> Any:
    return value


_collector = threading.local()


def _rebuild(ref: tuple) -> AsyncResult:
    placeholder = AsyncResult(ref=ref)
    found = getattr(_collector, "found", None)
    if found is not None:
        found.append(placeholder)
    return placeholder


def loads_collecting(data: bytes) -> tuple[Any, list[AsyncResult]]:
    """Unpickle, also returning the pending placeholders found inside."""
    _collector.found = found = []
    try:
        return _wire.loads(data), found
    finally:
        _collector.found = None
