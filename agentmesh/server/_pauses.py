"""Telling a server that was stopped from one that was busy.

A thread beats every ``BEAT`` seconds. A late beat means this process did not
run Python for a while, which has two causes that must not be confused:

* **busy**: an agent held the GIL (C code, a long garbage collection) or the
  CPU was saturated. The process ran; gRPC's own threads kept answering the
  callers' keepalive pings without the GIL, so nobody moved anything.
* **stopped**: SIGSTOP, a frozen VM, a host that did not schedule it. Nothing
  ran, keepalives went unanswered, and callers may have moved its agents.

The discriminator is the process's CPU time, which the GIL cannot fool: over
a gap of busy work it advances with the wall clock; over a stop it stands
still. Only a stop is reported (``on_stop``); what to drop is decided from
what callers actually did, never from the pause alone.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("agentmesh.server")

#: how often the watch beats (s)
BEAT = 0.1
#: a gap in which the process used less CPU than this share of it was a stop, not work
STOPPED_BELOW = 0.25


class PauseWatch:
    """Beats on its own thread; assess() classifies a gap longer than after seconds (any thread).

    Gaps count from start(): what the server did before it (binding, waiting for the registry at start-up) is
    no pause of a running server, so it is never reported as a stop.
    """

    def __init__(self, after: float, on_stop: Callable[[float], None], finished: threading.Event) -> None:
        self.after = after
        self.on_stop = on_stop           # called (on the calling thread) with the gap's length after a stop
        self._finished = finished
        self._lock = threading.Lock()
        self._mark = (time.monotonic(), time.process_time())
        self._started = False
        self.busy_gaps = 0               # gaps over `after` that were work, not a stop
        self.longest_busy = 0.0          # the longest of them (s)

    def start(self) -> None:
        """Begin watching: the first gap runs from now."""
        with self._lock:
            self._mark = (time.monotonic(), time.process_time())
            self._started = True
        threading.Thread(target=self._beat, name="agentmesh-pause-watch", daemon=True).start()

    def _beat(self) -> None:
        while not self._finished.wait(BEAT):
            self.assess()

    def overdue(self) -> bool:
        """True when the last beat is older than `after`: a gap to assess before trusting local state."""
        return self._started and time.monotonic() - self._mark[0] > self.after

    def assess(self) -> None:
        """Close the current gap: report it if it was a stop (nothing before start())."""
        with self._lock:
            if not self._started:
                return
            wall, cpu = time.monotonic(), time.process_time()
            gap, used = wall - self._mark[0], cpu - self._mark[1]
            self._mark = (wall, cpu)
        if gap <= self.after:
            return
        if used >= STOPPED_BELOW * gap:
            self.busy_gaps += 1
            self.longest_busy = max(self.longest_busy, gap)
            log.info("agent server: Python did not run for %.1f s while the process worked (%.1f s of CPU): "
                     "an agent held the GIL; busy, not stopped, so nothing is dropped", gap, used)
            return
        self.on_stop(gap)
