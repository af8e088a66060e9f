"""Where a new agent goes: the registry's best server, else a child server."""
from __future__ import annotations

import logging
import time
from typing import Any

from .. import errors
from .._config import settings
from ..rpc import _connection, _loop
from ..rpc._proxy import create_on
from ..server._child import child_pool
from ..v1 import agent_server_pb2 as pb

log = logging.getLogger("agentmesh.discovery")

#: an unreachable registry is not asked again for this long (placements go to child mode meanwhile)
RETRY_UNREACHABLE_AFTER = 5.0

_views: dict[tuple[str, str], Any] = {}
_last_fallback_reason = ""

Placed = tuple[_connection.Connection, pb.CreateAgentResponse]


class _Spec:
    """What to create: the class, its constructor arguments, and a checkpoint to start from."""

    def __init__(self, cls: type, agent_id: str, init_blob: bytes, options: dict[str, Any],
                 state: bytes, state_seq: int) -> None:
        self.cls, self.agent_id, self.init_blob, self.options = cls, agent_id, init_blob, options
        self.state, self.state_seq = state, state_seq
        self.timeout = options.get("max_timeout_seconds")

    async def create_on(self, conn: _connection.Connection) -> pb.CreateAgentResponse:
        return await create_on(conn, self.cls, self.agent_id, self.init_blob, self.timeout,
                               checkpoint=self.options.get("checkpoint", True), state=self.state,
                               state_seq=self.state_seq)


def choose(cls: type, options: dict[str, Any]) -> _connection.Connection:
    """The session to the server a new agent should go to (the creation itself is pipelined)."""
    url = options.get("registry") or settings.registry
    if url:
        namespace = options.get("namespace") or settings.namespace
        placed, reason = _loop.run_sync(_by_registry(url, namespace, cls, options, set(), None))
        if placed is not None:
            return placed[0]
        _fallback(reason)
    return _connection.connect(child_pool.choose().wait_ready())


async def _by_registry(url: str, namespace: str, cls: type, options: dict[str, Any], exclude: set[str],
                       spec: "_Spec | None") -> tuple[tuple[_connection.Connection, Any] | None, str]:
    """The best registered server that answers (and, given spec, creates the agent); else why not."""
    from .etcd import EtcdError

    view = view_for(url, namespace)
    if not view.ready:
        if view.failed_at and time.monotonic() - view.failed_at < RETRY_UNREACHABLE_AFTER:
            return None, f"registry {url} is unreachable"
        try:
            await view.ensure_started()
        except EtcdError as exc:
            return None, str(exc)
    labels = options.get("labels")
    cls_name = f"{cls.__module__}:{cls.__qualname__}"
    refusals = []
    for record in view.candidates(labels, cls_name, exclude):
        address = record.get("address") or f"{record['host']}:{record['port']}"
        if address in exclude:
            continue
        try:
            conn = await _connection.get_connection(address, timeout=settings.registry_timeout)
            response = await spec.create_on(conn) if spec is not None else None
        except errors.CapacityError:
            view.full(record["server_id"])
            refusals.append(f"{address} full")
            continue
        except errors.ClassNotFoundError:
            refusals.append(f"{address} lacks {cls_name}")
            continue
        except (errors.ServerUnavailableError, errors.AuthenticationError, errors.VersionMismatchError) as exc:
            refusals.append(f"{address} refused: {exc}")
            continue
        view.placed(record["server_id"])
        return (conn, response), ""
    wanted = f" with labels {labels}" if labels else ""
    detail = f" ({'; '.join(refusals)})" if refusals else ""
    return None, f"no server registered in namespace {namespace!r}{wanted} has room for {cls_name}{detail}"


def place(cls: type, agent_id: str, init_blob: bytes, options: dict[str, Any],
          exclude: tuple[str, ...] = (), state: bytes = b"", state_seq: int = 0) -> Placed:
    """Create the agent where placement says; returns the connection and the server's answer.

    exclude names servers (ids or addresses) not to use: the one just lost.
    """
    spec = _Spec(cls, agent_id, init_blob, options, state, state_seq)
    url = options.get("registry") or settings.registry
    if url:
        namespace = options.get("namespace") or settings.namespace
        placed, reason = _loop.run_sync(_by_registry(url, namespace, cls, options, set(exclude), spec))
        if placed is not None:
            return placed
        _fallback(reason)
    return place_in_child(spec, set(exclude))


async def _close_views() -> None:
    for view in list(_views.values()):
        await view.close()
    _views.clear()


_loop.on_exit(_close_views)


def _fallback(reason: str) -> None:
    global _last_fallback_reason
    if reason != _last_fallback_reason:
        _last_fallback_reason = reason
        log.info("agentmesh: placing agents in child mode: %s", reason)


def view_for(url: str, namespace: str) -> Any:
    """The process's view of the servers of namespace in the registry at url."""
    from ._view import ServerView

    view = _views.get((url, namespace))
    if view is None:
        view = _views[(url, namespace)] = ServerView(url, namespace, settings.registry_timeout)
    return view


async def locate_async(agent_id: str, avoid: str = "", timeout: float = 10.0) -> str | None:
    """Where agent_id lives now per its registry record, waiting up to timeout for it to leave avoid."""
    import asyncio
    import json

    from . import keys
    from .etcd import EtcdError

    url, namespace = settings.registry, settings.namespace
    if not url:
        return None
    view = view_for(url, namespace)
    deadline = time.monotonic() + timeout
    while True:
        try:
            kv = await view.client.get(keys.agent_key(namespace, agent_id))
        except EtcdError:
            kv = None
        if kv is not None:
            address = json.loads(kv.value).get("address")
            if address and address != avoid:
                return address
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.05)


def locate(agent_id: str, avoid: str = "", timeout: float = 10.0) -> str | None:
    """locate_async from a user thread."""
    return _loop.run_sync(locate_async(agent_id, avoid, timeout))


def place_in_child(spec: _Spec, exclude: set[str]) -> Placed:
    """Child mode: the least loaded child server of this process (started on first use)."""
    child = child_pool.choose(exclude)
    for _ in range(2):
        address = child.wait_ready()

        async def create() -> Placed:
            conn = await _connection.get_connection(address)
            return conn, await spec.create_on(conn)

        try:
            return _loop.run_sync(create())
        except errors.CapacityError:
            child = child_pool.grow()
    raise errors.AgentCreationError("child servers are full")
