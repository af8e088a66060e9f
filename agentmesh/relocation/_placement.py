"""Where agents go: the registry's servers that fit, spread by free room, else child servers of this process.

One routine, :func:`place`, places every agent: a new one of ``to_dist()``
(behind :func:`choose`'s warm path), one that moves alone, and the many of a
lost server at once (an evacuation). The registry part reads the view once a
round, spreads the agents by free room (each goes where the most room is left
after those before it), opens each server's session once, and moves a refused
agent on to the next server; what the registry cannot take goes to child mode,
the reason logged once per change of reason.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Any, Collection, Mapping, NamedTuple, Sequence

from .. import errors
from .._class_cache import class_name
from .._client.slot import Transport
from .._runtime import Runtime
from ..discovery import ServerRecord, ServerView
from ..etcd import EtcdError, redact_url
from ..store import store_identity
from ..v1 import agent_server_pb2 as pb
from ._creation import AgentSpec, create_on
from ._state import Relocation

log = logging.getLogger("agentmesh.discovery")

#: an unreachable registry is not asked again for this long (placements go to child mode meanwhile)
RETRY_UNREACHABLE_AFTER = 5.0
#: a server whose session fails to open with these is passed over: the next one is tried
_UNREACHABLE = (errors.AgentMeshError, TimeoutError, OSError)
#: a creation a server refuses with these moves on to the next server
_REFUSED = (errors.ServerUnavailableError, errors.AuthenticationError, errors.VersionMismatchError)


class Placed(NamedTuple):
    """Where one agent went: the session, the server's answer (when placement created it) and how it was chosen
    (registry, child, child_fallback: the placements metric's results)."""

    conn: Transport
    response: pb.CreateAgentResponse | None
    where: str


def registry_of(runtime: Runtime, options: Mapping[str, Any]) -> tuple[str | None, str]:
    """(registry URL, namespace) an agent with these to_dist() options is placed by."""
    settings = runtime.settings
    return options.get("registry") or settings.registry, options.get("namespace") or settings.namespace


def choose(runtime: Runtime, cls: type, options: dict[str, Any]) -> Transport:
    """The session to the server a new agent should go to (the creation itself is pipelined)."""
    url, namespace = registry_of(runtime, options)
    conn = _at_once(runtime, url, namespace, cls, options) if url else None
    if conn is not None:
        counted(runtime, "registry")
        return conn
    placed = place(runtime, class_name(cls), options)[0]
    counted(runtime, placed.where)
    return placed.conn


def counted(runtime: Runtime, result: str) -> None:
    """Count a placement by where it went (registry, child, child_fallback, explicit) when metrics are on."""
    metrics = runtime.metrics
    if metrics is not None:
        metrics.child(metrics.placements, result).inc()


def _at_once(runtime: Runtime, url: str, namespace: str, cls: type, options: dict[str, Any]) -> Transport | None:
    """The best server's session, chosen on the caller's thread when the view is followed and that session
    is open (the usual case after the first placement); None sends the placement through the I/O loop."""
    view = runtime.started_view(url, namespace)
    if view is None:
        return None
    record = view.best(options.get("labels"), class_name(cls), store_of(runtime, options))
    if record is None:
        return None
    conn = runtime.pool.session_of(record.address)
    if conn is None or conn.draining or conn.server_id != record.server_id:
        return None
    view.placed(record.server_id)
    return conn


def place(runtime: Runtime, cls_name: str, options: Mapping[str, Any], count: int = 1, *,
          exclude: Collection[str] = (), specs: Sequence[AgentSpec] = ()) -> list[Placed]:
    """Where count agents of class cls_name with these to_dist() options go, in order (from a user thread).

    exclude names servers (ids or addresses) not to use: the one just lost.
    specs (one per agent): each is created at its target over the unary RPC, a
    refusal moving it on; without, only the sessions are chosen and the caller
    pipelines the creations on them.
    """
    assert not specs or len(specs) == count
    url, namespace = registry_of(runtime, options)
    placed: dict[int, Placed] = {}
    if url:
        placed, reason = runtime.run(_by_registry(runtime, url, namespace, cls_name, options.get("labels"), count,
                                                  set(exclude), specs, store_of(runtime, options)))
        if len(placed) < count:
            _fallback(runtime, reason)
    where = "child_fallback" if url else "child"
    for i in range(count):
        if i not in placed:
            placed[i] = _in_child(runtime, set(exclude), specs[i] if specs else None, where)
    return [placed[i] for i in range(count)]


def store_of(runtime: Runtime, options: Mapping[str, Any]) -> str:
    """The state store a server must commit to for an agent with these options: this process's, for a durable
    agent (its row is there); "" (any server) for the others."""
    return store_identity(runtime.settings.state_store) if options.get("durable") else ""


async def _by_registry(runtime: Runtime, url: str, namespace: str, cls_name: str, labels: dict[str, str] | None,
                       count: int, exclude: set[str], specs: Sequence[AgentSpec],
                       store: str = "") -> tuple[dict[int, Placed], str]:
    """The agents (by index) the registered servers that fit took, spread by free room; and why not the rest."""
    view = runtime.view(url, namespace)
    if not view.ready:
        if view.failed_at and time.monotonic() - view.failed_at < RETRY_UNREACHABLE_AFTER:
            return {}, f"registry {redact_url(url)} is unreachable"
        try:
            await view.ensure_started()
        except EtcdError as exc:
            return {}, str(exc)
    placed: dict[int, Placed] = {}
    waiting, refusals = list(range(count)), []
    while waiting:
        shares = _spread(view.candidates(labels, cls_name, exclude, store), waiting)
        if not shares:
            break
        given = {i for _, share in shares for i in share}
        waiting = [i for i in waiting if i not in given]
        outcomes = await asyncio.gather(*(_fill(runtime, view, namespace, record, share, specs, cls_name)
                                          for record, share in shares))
        for (record, _), (landed, back, refusal) in zip(shares, outcomes):
            placed.update(landed)
            if refusal:     # that server is passed over; its agents left try the others
                exclude.add(record.server_id)
                refusals.append(refusal)
                waiting.extend(back)
    wanted = (f" with labels {labels}" if labels else "") + (" with this process's state store" if store else "")
    detail = f" ({'; '.join(refusals)})" if refusals else ""
    return placed, f"no server registered in namespace {namespace!r}{wanted} has room for {cls_name}{detail}"


def _spread(records: list[ServerRecord], waiting: list[int]) -> list[tuple[ServerRecord, list[int]]]:
    """Each waiting agent to the server with the most free room left after the agents before it (records come
    most free first, ties at random); the servers given some, each with its share, in that order."""
    heap = [(-record.free, n) for n, record in enumerate(records)]
    heapq.heapify(heap)
    shares: dict[int, list[int]] = {}
    for i in waiting:
        if not heap:
            break
        free, n = heapq.heappop(heap)
        shares.setdefault(n, []).append(i)
        if free + 1 < 0:
            heapq.heappush(heap, (free + 1, n))
    return [(records[n], share) for n, share in shares.items()]


async def _fill(runtime: Runtime, view: ServerView, namespace: str, record: ServerRecord, share: list[int],
                specs: Sequence[AgentSpec], cls_name: str) -> tuple[dict[int, Placed], list[int], str]:
    """Open record's session and (given specs) create its share there: (landed, left over, why it refused)."""
    address = record.address
    try:
        conn = await runtime.pool.get(address, timeout=runtime.settings.registry_timeout, expect=record.server_id,
                                      namespace=namespace)
    except _UNREACHABLE as exc:
        return {}, share, f"{address} refused: {exc}"
    landed: dict[int, Placed] = {}
    for n, i in enumerate(share):
        try:
            response = await create_on(runtime, conn, specs[i]) if specs else None
        except errors.CapacityError:
            view.full(record.server_id)
            return landed, share[n:], f"{address} full"
        except errors.ClassNotFoundError:
            return landed, share[n:], f"{address} lacks {cls_name}"
        except _REFUSED as exc:
            return landed, share[n:], f"{address} refused: {exc}"
        view.placed(record.server_id)
        landed[i] = Placed(conn, response, "registry")
    return landed, [], ""


def _fallback(runtime: Runtime, reason: str) -> None:
    """Placement goes to child mode: say why, once per change of reason."""
    state = Relocation.of(runtime)
    if reason != state.fallback_reason:
        state.fallback_reason = reason
        log.info("agentmesh: placing agents in child mode: %s", reason)


def _in_child(runtime: Runtime, exclude: set[str], spec: AgentSpec | None, where: str) -> Placed:
    """Child mode: the least loaded child server of this process (started on first use); given spec, the agent
    is created there (a full child makes the pool grow)."""
    child = runtime.children.choose(exclude)
    if spec is None:
        return Placed(runtime.pool.connect(child.wait_ready()), None, where)
    for _ in range(2):
        address = child.wait_ready()

        async def create() -> Placed:
            conn = await runtime.pool.get(address)
            return Placed(conn, await create_on(runtime, conn, spec), where)

        try:
            return runtime.run(create())
        except errors.CapacityError:
            child = runtime.children.grow()
    raise errors.AgentCreationError("child servers are full")
