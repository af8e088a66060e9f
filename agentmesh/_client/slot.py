"""One call in flight (CallSlot), where it runs (ResultRef), and the interfaces on either side of it: its owner and
its transport."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import grpc
from google.protobuf.message import Message

from .. import _codec, _status, _tracing, errors
from ..v1 import agent_server_pb2 as pb

_MISSING = object()
#: held while a reply is decoded, so that it is decoded once (one lock for all: a lock per call was a third of
#: the objects a pending call keeps for the garbage collector to walk)
_DECODING = threading.Lock()


class ResultRef(NamedTuple):
    """Where a call runs, as a placeholder names it: enough for anyone to fetch its value from that server."""

    server_id: str
    address: str
    agent_id: str
    call_id: str


class CallOwner(Protocol):
    """What a connection tells whoever made a call (a proxy's binding to its agent's server)."""

    agent_id: str
    name: str   # the agent's name ("" until known): errors about its calls name it

    def on_checkpoint(self, reply: pb.Reply) -> None:
        """A reply carried the agent's state after that call (I/O loop)."""

    def on_lost(self, conn: "Transport", slots: list["CallSlot"], reason: str, refused: int = 0) -> None:
        """The server behind conn is gone, hung, fenced or draining (or refused the calls with status
        refused, e.g. STALE_EPOCH); slots are calls to replay."""

    def on_refused(self, conn: "Transport", slot: "CallSlot", reply: pb.Reply) -> bool:
        """The server would not create the agent (full, class unknown); True when the owner retries elsewhere."""

    def on_created(self, conn: "Transport", reply: pb.Reply) -> None:
        """The server built the agent (the reply to its pipelined creation)."""


class Transport(Protocol):
    """A session with one agent server, as a call, its owner and a move see it (a Connection, or Unreachable)."""

    address: str
    server_id: str
    epoch: int
    closed: bool
    draining: bool            # the server stops: its agents move, and the session closes once unused
    max_message_size: int

    def submit(self, slot: "CallSlot") -> None:
        """Send the call (any thread); its reply lands in the slot."""

    def cancel(self, slot: "CallSlot") -> None:
        """The caller gave up on slot's call (any thread)."""

    def attach(self, owner: CallOwner, creator: bool = False) -> None:
        """owner's agent lives on this server, so its loss is told to owner; creator: owner created the agent,
        so the checkpoints the server pushes after others' calls go to it too."""

    def detach(self, owner: CallOwner, left: bool = True) -> None:
        """owner no longer needs this session (left: its agent left, so a late checkpoint push is no news either);
        a draining session closes once nobody needs it."""

    def has_pending(self, owner: CallOwner) -> bool:
        """Whether a call of owner's awaits its reply here."""

    def close_if_unused(self) -> None:
        """Close a draining session once no owner, call or fetch needs it (any thread)."""

    async def unary(self, method: str, request: Message, *, timeout: float | None = None,
                    metadata: Sequence[tuple[str, str]] = (), what: str = "") -> Any:
        """The answer of the server's unary RPC method (I/O loop); a failure raises the agentmesh error it means."""

    def stream(self, method: str, request: Message) -> grpc.aio.UnaryStreamCall:
        """The call of the server's server-streaming RPC method, to read its messages from (I/O loop)."""


class _Raised:
    """A decoded failure: the exception to raise where the value is used."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def decode_reply(reply: pb.Reply, agent_id: str, method: str, name: str = "") -> Any:
    """Unpickle an OK reply; a failed one becomes the exception to raise on use (naming the agent by name,
    when known, and id)."""
    if reply.status != pb.OK:
        return _Raised(_status.reply_error(reply, agent_id, method, name))
    try:
        return _codec.loads(reply.payload)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a payload error
        return _Raised(errors.PayloadError(
            f"result of {method}() on {errors.agent_label(agent_id, name)} could not be unpickled here: "
            f"{type(exc).__name__}: {exc}", agent_id=agent_id, method=method))


def raised(value: Any) -> BaseException | None:
    """The exception a decoded value stands for, or None for a value."""
    return value.error if isinstance(value, _Raised) else None


class CallSlot:
    """One call's reply: set once on the I/O loop, waited on from any thread.

    A lock held from birth and released when the reply lands is the cheapest
    cross-thread wait CPython offers; every waiter passes it on.
    """

    __slots__ = ("call", "payload", "size", "owner", "conn", "_lock", "reply", "_callbacks", "_value", "sent", "span")

    def __init__(self, call: pb.Call, owner: CallOwner | None = None, conn: Transport | None = None,
                 payload: Sequence[bytes] = ()) -> None:
        self.call = call
        #: the call's arguments, pickled, as parts sent one after another: kept beside call (its payload field
        #: stays empty), so that a large one is never copied into a protobuf message (see _frames.client_frame)
        self.payload = payload
        self.size = sum(map(len, payload))
        self.owner = owner          # who made the call (failover replays through it)
        self.conn = conn            # the connection it was last sent on
        self._lock = threading.Lock()
        self._lock.acquire()
        self.reply: pb.Reply | None = None
        self._callbacks: list[Callable[[pb.Reply], None]] | None = None
        self._value: Any = _MISSING
        self.sent = 0.0             # when it was sent (set only while metrics are on)
        self.span: Any = None       # the caller's trace span (tracing on), ended with the reply

    def set(self, reply: pb.Reply) -> None:
        """Deliver the reply (I/O loop thread); the first one wins."""
        if self.reply is not None:
            return
        self.reply = reply
        self._lock.release()
        if self.span is not None:
            _tracing.end_span(self.span, reply)
        callbacks, self._callbacks = self._callbacks, None
        for cb in callbacks or ():
            cb(reply)

    def done(self) -> bool:
        return self.reply is not None

    def cancel(self) -> None:
        """The caller gave up on this call (any thread): the session it was sent on answers it as cancelled and
        tells the server; nothing happens before it is sent."""
        if self.conn is not None:
            self.conn.cancel(self)

    def ref(self) -> ResultRef:
        """Where the call runs, as a placeholder names it."""
        conn = self.conn
        return ResultRef(conn.server_id if conn else "", conn.address if conn else "", self.call.agent_id,
                         self.call.call_id)

    def wait(self, timeout: float | None = None) -> pb.Reply:
        """Block until the reply is there."""
        reply = self.reply
        if reply is not None:
            return reply
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(
                f"agentmesh: {self.call.method}() on "
                f"{errors.agent_label(self.call.agent_id, getattr(self.owner, 'name', ''))} "
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

    def notify(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future) -> None:
        """Resolve fut (a future of loop, any loop) once the reply is here; from loop's thread."""
        def settle() -> None:
            if not fut.done():
                fut.set_result(None)

        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(lambda _reply: loop.call_soon_threadsafe(settle))
        if self.reply is not None:   # it landed meanwhile (its callbacks may have been taken already)
            settle()

    def value(self) -> Any:
        """The unpickled result (decoded once), or a wrapped error (see raised())."""
        if self._value is _MISSING:
            with _DECODING:
                if self._value is _MISSING:
                    self._value = decode_reply(self.reply, self.call.agent_id,  # type: ignore[arg-type]
                                               self.call.method, getattr(self.owner, "name", ""))
        return self._value
