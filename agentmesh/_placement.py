"""Where a new agent goes: the registry's best server that fits, else a child server of this process."""
from __future__ import annotations

import logging
import time
from typing import Any

from . import errors
from ._classes import class_name
from ._client.connection import Connection
from ._creation import AgentSpec, create_on
from ._runtime import Runtime
from .etcd import EtcdError, redact_url
from .v1 import agent_server_pb2 as pb

log = logging.getLogger("agentmesh.discovery")

#: an unreachable registry is not asked again for this long (placements go to child mode meanwhile)
RETRY_UNREACHABLE_AFTER = 5.0

Placed = tuple[Connection, pb.CreateAgentResponse]


def _registry(runtime: Runtime, options: dict[str, Any]) -> tuple[str | None, str]:
    settings = runtime.settings
    return options.get("registry") or settings.registry, options.get("namespace") or settings.namespace


def choose(runtime: Runtime, cls: type, options: dict[str, Any]) -> Connection:
    """The session to the server a new agent should go to (the creation itself is pipelined)."""
    url, namespace = _registry(runtime, options)
    if url:
        conn = _at_once(runtime, url, namespace, cls, options)
        if conn is None:
            placed, reason = runtime.run(_by_registry(runtime, url, namespace, cls, options, set(), None))
            conn = placed[0] if placed is not None else None
            if conn is None:
                _fallback(runtime, reason)
        if conn is not None:
            counted(runtime, "registry")
            return conn
    conn = runtime.pool.connect(runtime.children.choose().wait_ready())
    counted(runtime, "child" if not url else "child_fallback")
    return conn


def counted(runtime: Runtime, result: str) -> None:
    """Count a placement by where it went (registry, child, child_fallback, explicit) when metrics are on."""
    metrics = runtime.metrics
    if metrics is not None:
        metrics.child(metrics.placements, result).inc()


def _at_once(runtime: Runtime, url: str, namespace: str, cls: type, options: dict[str, Any]) -> Connection | None:
    """The best server's session, chosen on the caller's thread when the view is followed and that session
    is open (the usual case after the first placement); None sends the placement through the I/O loop."""
    view = runtime.started_view(url, namespace)
    if view is None:
        return None
    record = view.best(options.get("labels"), class_name(cls))
    if record is None:
        return None
    conn = runtime.pool.session_of(record.get("address") or f"{record['host']}:{record['port']}")
    if conn is None or conn.draining or conn.server_id != record["server_id"]:
        return None
    view.placed(record["server_id"])
    return conn


def place(runtime: Runtime, spec: AgentSpec, exclude: tuple[str, ...] = ()) -> Placed:
    """Create the agent where placement says; returns the connection and the server's answer.

    exclude names servers (ids or addresses) not to use: the one just lost.
    """
    url, namespace = _registry(runtime, spec.options)
    if url:
        placed, reason = runtime.run(_by_registry(runtime, url, namespace, spec.cls, spec.options, set(exclude),
                                                  spec))
        if placed is not None:
            return placed  # type: ignore[return-value]
        _fallback(runtime, reason)
    return _in_child(runtime, spec, set(exclude))


async def _by_registry(runtime: Runtime, url: str, namespace: str, cls: type, options: dict[str, Any],
                       exclude: set[str], spec: AgentSpec | None) -> tuple[tuple[Connection, Any] | None, str]:
    """The best registered server that answers (and, given spec, creates the agent); else why not."""
    view = runtime.view(url, namespace)
    if not view.ready:
        if view.failed_at and time.monotonic() - view.failed_at < RETRY_UNREACHABLE_AFTER:
            return None, f"registry {redact_url(url)} is unreachable"
        try:
            await view.ensure_started()
        except EtcdError as exc:
            return None, str(exc)
    labels = options.get("labels")
    name = class_name(cls)
    refusals = []
    for record in view.candidates(labels, name, exclude):
        address = record.get("address") or f"{record['host']}:{record['port']}"
        if address in exclude:
            continue
        try:
            conn = await runtime.pool.get(address, timeout=runtime.settings.registry_timeout,
                                          expect=record["server_id"], namespace=namespace)
            response = await create_on(runtime, conn, spec) if spec is not None else None
        except errors.CapacityError:
            view.full(record["server_id"])
            refusals.append(f"{address} full")
            continue
        except errors.ClassNotFoundError:
            refusals.append(f"{address} lacks {name}")
            continue
        except (errors.ServerUnavailableError, errors.AuthenticationError, errors.VersionMismatchError) as exc:
            refusals.append(f"{address} refused: {exc}")
            continue
        view.placed(record["server_id"])
        return (conn, response), ""
    wanted = f" with labels {labels}" if labels else ""
    detail = f" ({'; '.join(refusals)})" if refusals else ""
    return None, f"no server registered in namespace {namespace!r}{wanted} has room for {name}{detail}"


def _fallback(runtime: Runtime, reason: str) -> None:
    if reason != runtime.fallback_reason:
        runtime.fallback_reason = reason
        log.info("agentmesh: placing agents in child mode: %s", reason)


def _in_child(runtime: Runtime, spec: AgentSpec, exclude: set[str]) -> Placed:
    """Child mode: the least loaded child server of this process (started on first use)."""
    child = runtime.children.choose(exclude)
    for _ in range(2):
        address = child.wait_ready()

        async def create() -> Placed:
            conn = await runtime.pool.get(address)
            return conn, await create_on(runtime, conn, spec)

        try:
            return runtime.run(create())
        except errors.CapacityError:
            child = runtime.children.grow()
    raise errors.AgentCreationError("child servers are full")
