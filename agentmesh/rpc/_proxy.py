"""RpcObject: the local stand-in of an object that lives on an agent server."""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import threading
import time
import uuid
from typing import Any

import grpc

from .. import errors
from .._config import settings
from ..v1 import agent_server_pb2 as pb
from . import _connection, _loop, _wire
from ._meta import method_table
from ._result import AsyncResult, CallSlot

log = logging.getLogger("agentmesh.rpc")

_CALL_PREFIX = secrets.token_hex(6) + "-"
_call_counter = itertools.count(1)


def next_call_id() -> str:
    """A call id unique across the mesh: a random per-process prefix and a counter."""
    return _CALL_PREFIX + str(next(_call_counter))


def format_address(host: str, port: int | str | None) -> str:
    if port is None:
        raise ValueError(f"to_dist(host={host!r}) needs a port too")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"port must be a number, got {port!r}") from None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class _RemoteMethod:
    """A bound method of a proxy; calling it sends the call."""

    __slots__ = ("_proxy", "_name", "_is_async")

    def __init__(self, proxy: "RpcObject", name: str, is_async: bool) -> None:
        self._proxy = proxy
        self._name = name
        self._is_async = is_async

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._proxy._call(self._name, args, kwargs, self._is_async)

    def __repr__(self) -> str:
        kind = "async" if self._is_async else "sync"
        return f"<remote {kind} method {self._name} of {self._proxy!r}>"


class RpcObject:
    """Proxy of an agent on an agent server: public methods are forwarded to it.

    Asynchronous methods (``reply``, ``__call__`` and those marked
    ``@async_func``) return an :class:`AsyncResult` at once; the others wait
    for their value. A proxy pickles to a proxy of the same agent.
    """

    def __init__(self, *, cls_name: str, agent_id: str, address: str, server_id: str, epoch: int,
                 methods: dict[str, bool], name: str = "", conn: Any = None,
                 cls: type | None = None, init_blob: bytes = b"", options: dict | None = None,
                 relocatable: bool = False) -> None:
        self.agent_id = agent_id
        self._name = name
        self._creation: CallSlot | None = None     # the __create__ call while the agent is being built
        self._relocatable = relocatable            # placement chose the server: a refusal moves on
        self._cls_name = cls_name
        self._address = address
        self._server_id = server_id
        self._epoch = epoch
        self._methods = methods
        self._conn = None
        self._cls = cls                 # set on the proxy that created the agent: it can re-create it
        self._init_blob = init_blob
        self._options = options or {}
        self._timeout = self._options.get("max_timeout_seconds")
        self._ckpt: tuple[int, bytes] = (0, b"")   # (calls completed, state) after the last reply
        self._move_lock = threading.Lock()
        self._held: list[CallSlot] | None = None   # calls waiting while the agent moves
        if conn is not None:
            self._bind(conn)

    def _bind(self, conn: Any) -> None:
        old = self._conn
        self._conn = conn
        conn.proxies.add(self)
        if old is not None and old is not conn:
            old.proxies.discard(self)
            old.close_if_unused()

    @property
    def server(self) -> str:
        """Where the agent lives now, as "host:port"."""
        return self._address

    @property
    def name(self) -> str:
        """The agent's name (known locally, or as its constructor set it)."""
        creation = self._creation
        if not self._name and creation is not None:
            creation.wait(self._timeout)
        return self._name

    # -- creation -------------------------------------------------------------
    def _start_creation(self, conn: Any) -> None:
        """Send the creation ahead of the first calls, on the same session (returns at once)."""
        ref = _wire.class_cache.ref(self._cls, conn.server_id)
        _wire.class_cache.mark_shipped(conn.server_id, ref.digest)   # the session is ordered
        request = pb.CreateAgentRequest(agent_id=self.agent_id, cls=ref, init_args=self._init_blob,
                                        checkpoint=self._options.get("checkpoint", True))
        slot = CallSlot(pb.Call(call_id=next_call_id(), agent_id=self.agent_id, method="__create__",
                                payload=request.SerializeToString()), self)
        self._creation = slot
        conn.submit(slot)

    def _on_created(self, conn: Any, reply: pb.Reply) -> None:
        """The server built the agent (I/O loop): note its epoch, id and the agent's name."""
        response = pb.CreateAgentResponse.FromString(reply.payload)
        if conn is self._conn:
            self._epoch, self._server_id = response.epoch, response.server_id
        self._name = response.name or self._name

    def _refused(self, conn: Any, slot: CallSlot, reply: pb.Reply) -> bool:
        """A creation or call refused because the agent could not be created there: retry elsewhere?"""
        if self._cls is None:
            return False
        if reply.status == pb.CLASS_NOT_FOUND:
            _wire.class_cache.forget(conn.server_id, _wire.class_cache.ref(self._cls, conn.server_id).digest)
        elif not (reply.status == pb.CAPACITY and self._relocatable):
            return False
        self._server_lost(conn, [slot], reply.error_message, refused=reply.status)
        return True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        is_async = self._methods.get(name)
        if is_async is None:   # a public attribute: read its value from the server
            return self._call("__getattr__", (name,), {}, False)
        bound = _RemoteMethod(self, name, is_async)
        self.__dict__[name] = bound
        return bound

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("__call__", args, kwargs, self._methods.get("__call__", True))

    def _call(self, method: str, args: tuple, kwargs: dict, is_async: bool) -> Any:
        conn = self._conn
        if conn is None:
            try:
                conn = _connection.connect(self._address)
            except errors.ServerUnavailableError:
                if not self._can_move():
                    raise
                conn = _connection.closed_connection(self._address)
            self._bind(conn)
        try:
            payload = _wire.dumps((args, kwargs)) if args or kwargs else b""
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises
            raise errors.PayloadError(
                f"arguments of {method}() for agent {self.agent_id} cannot be pickled: "
                f"{type(exc).__name__}: {exc}", agent_id=self.agent_id, method=method) from exc
        if len(payload) > conn.max_message_size:
            raise errors.MessageTooLargeError(
                f"arguments of {method}() are {len(payload)} bytes, over the limit of "
                f"{conn.max_message_size} bytes (max_message_size)", agent_id=self.agent_id, method=method)
        slot = CallSlot(pb.Call(call_id=next_call_id(), agent_id=self.agent_id, method=method,
                                payload=payload, epoch=self._epoch), self)
        if self._held is None or not self._hold(slot):
            conn.submit(slot)
        result = AsyncResult(slot)
        if is_async:
            return result
        return result.result(self._timeout)

    # -- failover -------------------------------------------------------------
    def _note_checkpoint(self, reply: pb.Reply) -> None:
        """Keep the state that came with a reply (I/O loop)."""
        if reply.seq > self._ckpt[0]:
            self._ckpt = (reply.seq, reply.state)

    def _can_move(self) -> bool:
        return self._cls is not None or bool(settings.registry)

    def _hold(self, slot: CallSlot) -> bool:
        with self._move_lock:
            if self._held is None:
                return False
            self._held.append(slot)
            return True

    def _server_lost(self, conn: Any, slots: list[CallSlot], reason: str, refused: int = 0) -> None:
        """The server behind conn is gone, hung, fenced or draining: move the agent, replay slots."""
        with self._move_lock:
            if self._held is not None:          # already moving: these calls go along
                self._held.extend(slots)
                return
            current = self._conn
            if current is not conn and current is not None and not current.closed:
                moved_to = current               # already moved: just send them there
            else:
                moved_to = None
                self._held = list(slots)
        if moved_to is not None:
            for slot in slots:
                moved_to.submit(slot)
            return
        if not self._can_move():
            self._fail_held(f"agent server {conn.address} hosting agent {self.agent_id} was lost: {reason}")
            return
        threading.Thread(target=self._move, args=(conn, reason, refused), name="agentmesh-failover",
                         daemon=True).start()

    def _fail_held(self, message: str) -> None:
        with self._move_lock:
            held, self._held = self._held or [], None
        for slot in held:
            _connection.fail(slot, pb.UNAVAILABLE, message, "ServerUnavailableError")

    def _move(self, lost: Any, reason: str, refused: int = 0) -> None:
        """Re-create the agent elsewhere with its last checkpoint and replay the held calls (own thread).

        refused: the server would not create the agent (full, or it could not
        load the class by reference): another server, or the same with the class by value.
        """
        start = time.monotonic()
        try:
            if refused == pb.CLASS_NOT_FOUND:
                target, how = self._create_again(lost), "created with its class shipped by value"
            else:
                target = None if refused else self._same_server_again(lost)
                how = "reconnected to the same server"
            if target is None:
                target, how = self._relocate(lost)
        except Exception as exc:  # noqa: BLE001 - every held call must learn why
            log.error("agent %s (%s): failover from %s failed: %s", self._name or self.agent_id,
                      self._cls_name, lost.address, exc)
            self._fail_held(f"agent {self.agent_id} lost with server {lost.address} ({reason}) and could "
                            f"not be moved: {exc}")
            return
        with self._move_lock:
            held, self._held = self._held or [], None
            self._address, self._server_id = target.address, target.server_id
            self._bind(target)
        if self.agent_id in _owned:
            _owned[self.agent_id] = target.address
        held.sort(key=lambda slot: int(slot.call.call_id.rsplit("-", 1)[1]))
        for slot in held:
            slot.call.epoch = self._epoch
            target.submit(slot)
        log.warning("agent %s (%s) moved from %s to %s after %s: %s, %d call(s) replayed, in %.2f s",
                    self._name or self.agent_id, self._cls_name, lost.address, target.address, reason, how,
                    len(held), time.monotonic() - start)

    def _create_again(self, conn: Any) -> Any:
        """Create on the same server through the unary path, which ships the class by value if needed."""
        seq, state = self._ckpt
        response = _loop.run_sync(create_on(conn, self._cls, self.agent_id, self._init_blob, self._timeout,
                                            checkpoint=self._options.get("checkpoint", True), state=state,
                                            state_seq=seq))
        self._epoch = response.epoch
        self._name = response.name or self._name
        return conn

    def _same_server_again(self, lost: Any) -> Any:
        """The same server, if the loss was a blip and it still holds the agent at the same epoch."""
        if lost.draining:
            return None
        try:
            conn = _connection.connect(lost.address, timeout=_PROBE_TIMEOUT)
        except errors.AgentMeshError:
            return None
        if conn.server_id == lost.server_id and conn.epoch == lost.epoch:
            return conn
        return None

    def _finish_on(self, lost: Any, timeout: float = 30.0) -> None:
        """A draining server: let our calls there finish, and take the state they leave."""
        deadline = time.monotonic() + timeout
        while any(slot.owner is self for slot in list(lost.pending.values())):
            if time.monotonic() > deadline or lost.closed:
                return
            time.sleep(0.005)
        if not self._ckpt[1]:   # checkpoints off: ask the server for the state once
            async def get_state() -> pb.AgentState:
                return await lost.stub.GetState(pb.StateRequest(agent_id=self.agent_id),
                                                metadata=lost.metadata, timeout=5.0)

            try:
                state = _loop.run_sync(get_state())
                self._ckpt = (state.seq, state.state)
            except Exception as exc:  # noqa: BLE001 - then it restarts from its constructor
                log.warning("agent %s: could not fetch its state from draining %s: %s",
                            self.agent_id, lost.address, exc)

    def _relocate(self, lost: Any) -> tuple[Any, str]:
        if self._cls is None:        # a copy of the proxy: follow the agent's record in the registry
            from ..discovery._placement import locate

            address = locate(self.agent_id, avoid=lost.address)
            if not address:
                raise errors.ServerUnavailableError(
                    f"no registry record says where agent {self.agent_id} went")
            conn = _connection.connect(address)
            self._epoch = 0
            return conn, "found in the registry"
        from ..discovery import _placement

        if lost.draining and not lost.closed:
            self._finish_on(lost)
        seq, state = self._ckpt
        conn, response = _placement.place(
            self._cls, self.agent_id, self._init_blob, self._options,
            exclude=(lost.server_id, lost.address), state=state, state_seq=seq)
        self._epoch = response.epoch
        return conn, (f"re-created from its checkpoint after call {seq}" if state
                      else "re-created from its constructor arguments")

    def __reduce__(self):
        return (_rebuild_proxy, (self._cls_name, self.agent_id, self._address, self._server_id,
                                 self._epoch, self._methods, self._name))

    def __repr__(self) -> str:
        return f"<RpcObject {self._cls_name} {self._name or self.agent_id} on {self._address}>"


#: how long a lost server gets to answer again before its agents move
_PROBE_TIMEOUT = 0.5


def _rebuild_proxy(cls_name: str, agent_id: str, address: str, server_id: str, epoch: int,
                   methods: dict[str, bool], name: str) -> RpcObject:
    return RpcObject(cls_name=cls_name, agent_id=agent_id, address=address, server_id=server_id,
                     epoch=epoch, methods=methods, name=name)


async def create_on(conn: _connection.Connection, cls: type, agent_id: str, init_blob: bytes,
                    timeout: float | None = None, *, checkpoint: bool = True, state: bytes = b"",
                    state_seq: int = 0) -> pb.CreateAgentResponse:
    """Create an agent of cls on the server behind conn (I/O loop).

    The class goes by reference when the server can import it, else by value;
    either way its bytes are sent once per server.
    """
    by_value = False
    for _ in range(4):
        ref = _wire.class_cache.ref(cls, conn.server_id, by_value)
        request = pb.CreateAgentRequest(agent_id=agent_id, cls=ref, init_args=init_blob, checkpoint=checkpoint,
                                        state=state, state_seq=state_seq)
        try:
            response = await conn.stub.CreateAgent(request, metadata=conn.metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            detail = exc.details() or ""
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "unknown class digest" in detail:
                _wire.class_cache.forget(conn.server_id, ref.digest)
                continue
            if exc.code() == grpc.StatusCode.NOT_FOUND and "cannot be loaded" in detail and not by_value:
                by_value = True
                continue
            raise _connection._status_error(exc, conn.address, "agent creation") from None
        _wire.class_cache.mark_shipped(conn.server_id, ref.digest)
        return response
    raise errors.AgentCreationError(f"agent server {conn.address} keeps losing class {ref.name}")


#: agents this process created: (address, agent_id); deleted when the process exits
_owned: dict[str, str] = {}


async def _delete_owned() -> None:
    """At exit, delete the agents this process created so they do not hold capacity forever."""
    async def delete(agent_id: str, address: str) -> None:
        try:
            conn = await _connection.get_connection(address, timeout=1.0)
            await conn.stub.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent_id), metadata=conn.metadata,
                                        timeout=2.0)
        except (grpc.aio.AioRpcError, errors.AgentMeshError):
            log.debug("could not delete agent %s on %s at exit", agent_id, address)

    owned = list(_owned.items())
    _owned.clear()
    await asyncio.gather(*(delete(agent_id, address) for agent_id, address in owned))


_loop.on_exit(_delete_owned)


def _name_from(args: tuple, kwargs: dict) -> str:
    """The name an agent will have, when its constructor follows AgentBase(name, ...)."""
    name = kwargs.get("name", args[0] if args else "")
    return name if isinstance(name, str) else ""


def create_proxy(cls: type, args: tuple, kwargs: dict, host: str | None = None,
                 port: int | str | None = None, **options: Any) -> RpcObject:
    """Return the proxy of a new object of cls on an agent server, at once.

    host/port: that server. Otherwise the registry's choice (options such as
    ``labels`` constrain it), else a child server of this process. The
    creation travels ahead of the first calls on the same session, so this
    does not wait for the constructor; if it fails, the first use raises
    AgentCreationError.
    """
    agent_id = options.pop("agent_id", None) or uuid.uuid4().hex
    try:
        init_blob = _wire.dumps((args, kwargs))
    except Exception as exc:  # noqa: BLE001
        raise errors.AgentCreationError(
            f"constructor arguments of {cls.__name__} cannot be pickled: {type(exc).__name__}: {exc}") from exc
    if host is not None:
        conn, relocatable = _connection.connect(format_address(host, port)), False
    else:
        from ..discovery import _placement

        conn, relocatable = _placement.choose(cls, options), True
    proxy = RpcObject(cls_name=f"{cls.__module__}:{cls.__qualname__}", agent_id=agent_id,
                      address=conn.address, server_id=conn.server_id, epoch=0, methods=method_table(cls),
                      name=_name_from(args, kwargs), conn=conn, cls=cls, init_blob=init_blob, options=options,
                      relocatable=relocatable)
    _owned[agent_id] = conn.address
    proxy._start_creation(conn)
    return proxy
