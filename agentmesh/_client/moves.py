"""What failover did, told once per event: one WARNING per lost server, not one per agent.

Each agent's move is an INFO line; when every agent that was on a lost (or
draining) server has landed, one WARNING says how many moved where, how long
it took and how many failed.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

from .. import _metrics

log = logging.getLogger("agentmesh.rpc")

#: a loss is summed up once no agent of it has been moving for this long
SETTLE = 0.2


class _Event:
    __slots__ = ("address", "reason", "started", "pending", "targets", "failed", "replayed", "timer")

    def __init__(self, address: str, reason: str) -> None:
        self.address, self.reason, self.started = address, reason, time.monotonic()
        self.pending = 0
        self.targets: collections.Counter[str] = collections.Counter()
        self.failed = 0
        self.replayed = 0
        self.timer: threading.Timer | None = None


class MoveLog:
    """Counts the agents moving off each lost session and logs one summary per loss (any thread)."""

    def __init__(self, metrics: Callable[[], Any] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._events: dict[int, _Event] = {}
        self._metrics = metrics   # this process's metrics, or None (off)

    def begin(self, lost: object, address: str, reason: str) -> None:
        """An agent starts moving off the session lost (at address, for reason)."""
        with self._lock:
            event = self._events.get(id(lost))
            if event is None:
                event = self._events[id(lost)] = _Event(address, reason)
            if event.timer is not None:
                event.timer.cancel()
                event.timer = None
            event.pending += 1
        metrics = self._metrics()
        if metrics is not None:
            metrics.child(metrics.moves, _metrics.reason_label(reason)).inc()

    def finish(self, lost: object, target: str | None, replayed: int = 0) -> None:
        """That agent landed at target (None: it could not be moved)."""
        with self._lock:
            event = self._events.get(id(lost))
            if event is None:
                return
            event.pending -= 1
            if target is None:
                event.failed += 1
            else:
                event.targets[target] += 1
            event.replayed += replayed
            if event.pending == 0:
                event.timer = threading.Timer(SETTLE, self._report, args=(id(lost), event))
                event.timer.daemon = True
                event.timer.start()

    def _report(self, key: int, event: _Event) -> None:
        with self._lock:
            if event.pending or self._events.get(key) is not event:
                return
            del self._events[key]
        metrics = self._metrics()
        if metrics is not None:
            metrics.child(metrics.failovers, _metrics.reason_label(event.reason)).inc()
        moved = sum(event.targets.values())
        failed = f"; {event.failed} could not be moved" if event.failed else ""
        log.warning("agent server %s lost (%s): %d agent(s) moved to %d server(s) in %.2f s, %d call(s) "
                    "replayed%s", event.address, event.reason, moved, len(event.targets),
                    time.monotonic() - event.started - SETTLE, event.replayed, failed)
