"""RpcObject: the local stand-in of an object that lives on an agent server."""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import uuid
from typing import Any

import grpc

from .. import errors
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
                 cls: type | None = None, init_blob: bytes = b"", options: dict | None = None) -> None:
        self.agent_id = agent_id
        self.name = name
        self._cls_name = cls_name
        self._address = address
        self._server_id = server_id
        self._epoch = epoch
        self._methods = methods
        self._conn = conn
        self._cls = cls
        self._init_blob = init_blob
        self._options = options or {}
        self._timeout = self._options.get("max_timeout_seconds")

    @property
    def server(self) -> str:
        """Where the agent lives now, as "host:port"."""
        return self._address

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
        if conn is None or conn.closed:
            conn = self._conn = _connection.connect(self._address)
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
                                payload=payload), self)
        conn.submit(slot)
        result = AsyncResult(slot)
        if is_async:
            return result
        return result.result(self._timeout)

    def _connection_lost(self, slot: CallSlot, conn: Any, reason: str) -> None:
        """The server carrying slot's call was lost (I/O loop)."""
        _connection.fail(slot, pb.UNAVAILABLE,
                         f"agent server {conn.address} hosting agent {self.agent_id} was lost: {reason}",
                         "ServerUnavailableError")

    def __reduce__(self):
        return (_rebuild_proxy, (self._cls_name, self.agent_id, self._address, self._server_id,
                                 self._epoch, self._methods, self.name))

    def __repr__(self) -> str:
        return f"<RpcObject {self._cls_name} {self.name or self.agent_id} on {self._address}>"


def _rebuild_proxy(cls_name: str, agent_id: str, address: str, server_id: str, epoch: int,
                   methods: dict[str, bool], name: str) -> RpcObject:
    return RpcObject(cls_name=cls_name, agent_id=agent_id, address=address, server_id=server_id,
                     epoch=epoch, methods=methods, name=name)


async def create_on(conn: _connection.Connection, cls: type, agent_id: str, init_blob: bytes,
                    timeout: float | None = None) -> pb.CreateAgentResponse:
    """Create an agent of cls on the server behind conn (I/O loop).

    The class goes by reference when the server can import it, else by value;
    either way its bytes are sent once per server.
    """
    by_value = False
    for _ in range(4):
        ref = _wire.class_cache.ref(cls, conn.server_id, by_value)
        request = pb.CreateAgentRequest(agent_id=agent_id, cls=ref, init_args=init_blob)
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


def make_proxy(cls: type, agent_id: str, conn: _connection.Connection, response: pb.CreateAgentResponse,
               init_blob: bytes, options: dict) -> RpcObject:
    _owned[agent_id] = conn.address
    return RpcObject(cls_name=f"{cls.__module__}:{cls.__qualname__}", agent_id=agent_id,
                     address=conn.address, server_id=response.server_id, epoch=response.epoch,
                     methods=method_table(cls), name=response.name, conn=conn, cls=cls,
                     init_blob=init_blob, options=options)


def create_proxy(cls: type, args: tuple, kwargs: dict, host: str | None = None,
                 port: int | str | None = None, **options: Any) -> RpcObject:
    """Build an object of cls on an agent server and return its proxy.

    host/port: that server. Otherwise the registry's choice (options such as
    ``labels`` constrain it), else a child server of this process.
    """
    agent_id = options.pop("agent_id", None) or uuid.uuid4().hex
    try:
        init_blob = _wire.dumps((args, kwargs))
    except Exception as exc:  # noqa: BLE001
        raise errors.AgentCreationError(
            f"constructor arguments of {cls.__name__} cannot be pickled: {type(exc).__name__}: {exc}") from exc
    timeout = options.get("max_timeout_seconds")
    if host is not None:
        address = format_address(host, port)

        async def create() -> tuple[_connection.Connection, pb.CreateAgentResponse]:
            conn = await _connection.get_connection(address)
            return conn, await create_on(conn, cls, agent_id, init_blob, timeout)

        conn, response = _loop.run_sync(create())
    else:
        from ..discovery import _placement

        conn, response = _placement.place(cls, agent_id, init_blob, options)
    return make_proxy(cls, agent_id, conn, response, init_blob, options)
