"""What failover did, told once per event: one WARNING per lost server, not one per agent.

Each agent's move is one line (INFO, or DEBUG for the agents of a crash);
when every agent that was on a lost (or draining) server has landed, one
WARNING says how many moved where, how long it took and how many failed.
A process may hold several proxies of one agent (copies unpickled from
arguments, a msghub's audience), each with its own binding that moves: the
agent is counted, and its move told, once.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Protocol

from .. import _metrics
from ..errors import agent_label

log = logging.getLogger("agentmesh.rpc")

#: a loss is summed up once no agent of it has been moving for this long
SETTLE = 0.2


class Moving(Protocol):
    """The agent a binding moves, as the log names it."""

    agent_id: str
    name: str
    cls_name: str


class _Event:
    __slots__ = ("address", "reason", "started", "moving", "landed", "failed", "replayed", "timer")

    def __init__(self, address: str, reason: str) -> None:
        self.address, self.reason, self.started = address, reason, time.monotonic()
        self.moving: collections.Counter[str] = collections.Counter()   # agent id: its bindings still moving
        self.landed: dict[str, str] = {}      # agent id: where it landed
        self.failed: set[str] = set()         # agent ids no binding could move
        self.replayed = 0
        self.timer: threading.Timer | None = None

    def seen(self, agent_id: str) -> bool:
        return agent_id in self.moving or agent_id in self.landed or agent_id in self.failed


class MoveLog:
    """Counts the agents moving off each lost session and logs one summary per loss (any thread)."""

    def __init__(self, metrics: Callable[[], Any] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._events: dict[int, _Event] = {}
        self._metrics = metrics   # this process's metrics, or None (off)

    def begin(self, lost: object, address: str, reason: str, agent_id: str) -> None:
        """A binding of agent agent_id starts moving it off the session lost (at address, for reason)."""
        with self._lock:
            event = self._events.get(id(lost))
            if event is None:
                event = self._events[id(lost)] = _Event(address, reason)
            if event.timer is not None:
                event.timer.cancel()
                event.timer = None
            new = not event.seen(agent_id)
            event.moving[agent_id] += 1
        metrics = self._metrics()
        if new and metrics is not None:
            metrics.child(metrics.moves, _metrics.reason_label(reason)).inc()

    def finish(self, lost: object, agent: Moving, target: str | None, replayed: int = 0, *, how: str = "",
               level: int = logging.DEBUG) -> None:
        """That binding of agent landed at target (None: it could not be moved) having replayed that many
        calls; the agent's first landing in this loss is logged at level, with how it moved."""
        with self._lock:
            event = self._events.get(id(lost))
            if event is None:
                return
            agent_id = agent.agent_id
            event.moving[agent_id] -= 1
            if event.moving[agent_id] <= 0:
                del event.moving[agent_id]
            first = target is not None and agent_id not in event.landed
            if target is not None:
                event.landed.setdefault(agent_id, target)
                event.failed.discard(agent_id)
            elif agent_id not in event.landed:
                event.failed.add(agent_id)
            event.replayed += replayed
            if not event.moving:
                event.timer = threading.Timer(SETTLE, self._report, args=(id(lost), event))
                event.timer.daemon = True
                event.timer.start()
            address, reason = event.address, event.reason
        if first:
            log.log(level, "%s moved from %s to %s after %s%s, %d call(s) replayed",
                    agent_label(agent_id, agent.name, agent.cls_name), address, target, reason,
                    f": {how}" if how else "", replayed)

    def _report(self, key: int, event: _Event) -> None:
        with self._lock:
            if event.moving or self._events.get(key) is not event:
                return
            del self._events[key]
        metrics = self._metrics()
        if metrics is not None:
            metrics.child(metrics.failovers, _metrics.reason_label(event.reason)).inc()
        failed = f"; {len(event.failed)} could not be moved" if event.failed else ""
        log.warning("agent server %s lost (%s): %d agent(s) moved to %d server(s) in %.2f s, %d call(s) "
                    "replayed%s", event.address, event.reason, len(event.landed), len(set(event.landed.values())),
                    time.monotonic() - event.started - SETTLE, event.replayed, failed)
