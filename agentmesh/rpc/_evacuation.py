"""Failover as one operation per lost server: every agent this process owned there, moved together.

When a session ends (the server crashed, was killed, or its host vanished),
each agent that lived there joins the lost server's Evacuation. One thread
then asks the lost server once whether it is back (a blip), places all the
agents in one pass over the registry's view (most free room first, spread
over the servers that fit), opens each target's session once, and pipelines
every agent's creation (from its last checkpoint) with its replayed calls
right behind it on that session: nobody waits for a creation to finish, and
an answer comes back as soon as its agent is built. A creation a target
refuses (full after all, class not there) falls back to the agent's own move.
"""
from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import threading
import time
from typing import Any, Protocol

from .. import errors
from .._runtime import Runtime
from ..etcd import EtcdError

log = logging.getLogger("agentmesh.rpc")

#: how long a lost server gets to answer again before its agents move
PROBE_TIMEOUT = 0.5


def same_server_again(runtime: Runtime, lost: Any) -> Any:
    """The lost server's new session, if the loss was a blip: it answers again as the same server, so it
    still holds its agents (those it dropped as moved refuse their calls, and move on their own); else None."""
    if lost.draining:
        return None
    try:
        conn = runtime.pool.connect(lost.address, timeout=PROBE_TIMEOUT, expect=lost.server_id)
    except (errors.AgentMeshError, TimeoutError, OSError):
        return None
    return conn if conn.server_id == lost.server_id else None


class Movable(Protocol):
    """What an evacuation needs of an agent's binding."""

    agent_id: str
    name: str
    cls_name: str
    spec: Any

    def land(self, conn: Any, recreate: bool) -> int:
        """Bind to conn (re-creating the agent there first when recreate) and replay the held calls; how many."""

    def move_alone(self, lost: Any, reason: str) -> None:
        """Move the way a single agent moves (its own thread): the fallback."""


class Evacuation:
    """The agents of one lost session, moved in one pass (see the module docstring)."""

    def __init__(self, runtime: Runtime, lost: Any, reason: str) -> None:
        self.runtime = runtime
        self.lost = lost
        self.reason = reason
        self.members: list[Movable] = []
        self.started = False

    @staticmethod
    def join(runtime: Runtime, lost: Any, reason: str, member: Movable) -> None:
        """member's server (session lost) is gone: move it with the others of that session (any thread)."""
        with runtime.evacuations_lock:
            evacuation = runtime.evacuations.get(id(lost))
            new = evacuation is None or evacuation.started or evacuation.lost is not lost
            if new:
                evacuation = runtime.evacuations[id(lost)] = Evacuation(runtime, lost, reason)
            evacuation.members.append(member)
        if new:   # deferred: the connection tells every owner in one pass on the I/O loop, then this starts
            runtime.loop.get().call_soon_threadsafe(evacuation._start)

    def _start(self) -> None:
        with self.runtime.evacuations_lock:
            self.started = True
            if self.runtime.evacuations.get(id(self.lost)) is self:
                del self.runtime.evacuations[id(self.lost)]
        threading.Thread(target=self._run, name="agentmesh-evacuation", daemon=True).start()

    # -- the one pass ------------------------------------------------------------
    def _run(self) -> None:
        lost, runtime, members = self.lost, self.runtime, self.members
        began = time.monotonic()
        same = same_server_again(runtime, lost)
        if same is not None:
            for member in members:
                runtime.moves.finish(lost, member, same.address, member.land(same, recreate=False),
                                     how="its server answered again")
            return
        try:
            placed, alone = self._place(members)
        except Exception as exc:  # noqa: BLE001 - then each agent tries on its own (and its calls learn why)
            log.info("evacuation of %s: placing %d agent(s) together failed (%s: %s); each moves alone",
                     lost.address, len(members), type(exc).__name__, exc)
            placed, alone = {}, list(members)
        for member in alone:
            member.move_alone(lost, self.reason)
        landed = collections.Counter()
        for conn, group in placed.items():
            for member in group:
                runtime.moves.finish(lost, member, conn.address, member.land(conn, recreate=True))
            landed[conn.address] += len(group)
        if landed:   # if the lost server was only stopped, it must drop these copies when it runs again
            runtime.pool.tell_moved(lost.server_id, lost.address,
                                    [m.agent_id for group in placed.values() for m in group])
        log.debug("evacuated %d agent(s) of %s to %s in %.2f s (%d moved alone)", sum(landed.values()),
                  lost.address, dict(landed), time.monotonic() - began, len(alone))

    def _place(self, members: list[Movable]) -> tuple[dict[Any, list[Movable]], list[Movable]]:
        """Targets for the members that can be re-created ({connection: members}), and the others."""
        placed: dict[Any, list[Movable]] = collections.defaultdict(list)
        alone = [m for m in members if m.spec is None]     # copies of a proxy follow the registry alone
        groups: dict[tuple, list[Movable]] = collections.defaultdict(list)
        settings = self.runtime.settings
        for member in members:
            if member.spec is None:
                continue
            options = member.spec.options
            labels = options.get("labels") or {}
            groups[(options.get("registry") or settings.registry, options.get("namespace") or settings.namespace,
                    tuple(sorted(labels.items())), member.cls_name)].append(member)
        children: list[Movable] = []
        for (url, namespace, labels, cls_name), group in groups.items():
            if not url:
                children.extend(group)
                continue
            try:
                by_registry, rest = self.runtime.run(self._by_registry(url, namespace, dict(labels), cls_name, group))
            except (EtcdError, errors.AgentMeshError, TimeoutError) as exc:
                log.info("evacuation of %s: registry placement failed (%s); child servers take the agents",
                         self.lost.address, exc)
                by_registry, rest = {}, group
            for conn, landed in by_registry.items():
                placed[conn].extend(landed)
            children.extend(rest)
        if children:
            self._to_children(children, placed)
        return placed, alone

    async def _by_registry(self, url: str, namespace: str, labels: dict[str, str], cls_name: str,
                           group: list[Movable]) -> tuple[dict[Any, list[Movable]], list[Movable]]:
        """Spread group over the registered servers that fit, most free room first; (placed, left over)."""
        runtime, lost = self.runtime, self.lost
        view = runtime.view(url, namespace)
        await view.ensure_started()
        exclude = {lost.server_id, lost.address}
        placed: dict[Any, list[Movable]] = {}
        waiting = list(group)
        while waiting:
            records = [r for r in view.candidates(labels or None, cls_name, exclude)
                       if (r.get("address") or f"{r['host']}:{r['port']}") not in exclude]
            if not records:
                break
            # most free room first: each agent goes where the most room is left after the ones before it
            heap = [(-(int(r.get("capacity", 0)) - int(r.get("agents", 0))), i, r) for i, r in enumerate(records)]
            heapq.heapify(heap)
            share: dict[int, list[Movable]] = collections.defaultdict(list)
            for member in waiting:
                if not heap:
                    break
                free, i, record = heapq.heappop(heap)
                share[i].append(member)
                if free + 1 < 0:
                    heapq.heappush(heap, (free + 1, i, record))
            waiting = waiting[sum(len(s) for s in share.values()):]

            async def session(record: dict) -> Any:
                address = record.get("address") or f"{record['host']}:{record['port']}"
                return await runtime.pool.get(address, timeout=runtime.settings.registry_timeout,
                                              expect=record["server_id"], namespace=namespace)

            indexes = list(share)
            conns = await asyncio.gather(*(session(records[i]) for i in indexes), return_exceptions=True)
            for i, conn in zip(indexes, conns):
                if isinstance(conn, BaseException):     # that one is gone too: its share tries the others
                    exclude.add(records[i]["server_id"])
                    waiting.extend(share[i])
                    continue
                for _ in share[i]:
                    view.placed(records[i]["server_id"])
                placed.setdefault(conn, []).extend(share[i])
        return placed, waiting

    def _to_children(self, members: list[Movable], placed: dict[Any, list[Movable]]) -> None:
        """Child mode: each member to the least loaded child server of this process."""
        runtime = self.runtime
        exclude = {self.lost.address}
        addresses: dict[Any, str] = {}
        for member in members:
            child = runtime.children.choose(exclude)
            if child not in addresses:
                addresses[child] = child.wait_ready()
            placed[runtime.pool.connect(addresses[child])].append(member)   # a failure: every member alone
