"""Threads for agent code: an idle thread is handed its next job directly."""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from typing import Any

log = logging.getLogger("agentmesh.server")

#: a backlog from which no job was taken for this long (s) gets more threads (its runners are busy)
STALLED = 0.02


class Workers(concurrent.futures.Executor):
    """Threads for agent code: an idle thread is handed its next job directly.

    Cheaper than ThreadPoolExecutor on the call path: no Future and no shared
    queue per job, and the most recently idle (cache-warm) thread goes first.
    ``run(fn, arg)`` fires and forgets; ``submit`` is the Executor API.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max(1, int(max_workers))
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[list] = []          # [wake lock, job] of each waiting thread, most recent last
        self._backlog: collections.deque = collections.deque()
        self._count = 0
        self._shutdown = False
        self._taken = 0                      # jobs taken from the backlog so far (progress, for the monitor)
        self._backlogged = threading.Condition(self._lock)
        self._monitor: threading.Thread | None = None
        self._monitor_idle = False           # the monitor waits for a backlog (notify it when one forms)

    def run(self, fn: Any, arg: Any) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("agentmesh: the agent server is stopped")
            if self._idle:
                waiter = self._idle.pop()
                waiter[1] = (fn, arg)
                waiter[0].release()
                return
            if self._count >= self._max:
                self._backlog.append((fn, arg))
                self._watch_backlog()
                return
            self._count += 1
            n = self._count
        threading.Thread(target=self._work, args=((fn, arg),), name=f"{self._name}_{n}", daemon=True).start()

    def run_many(self, fn: Any, args: list, wake: int = 4) -> None:
        """fn(arg) for each arg, on at most `wake` threads woken for them (plus any that are free later):
        10,000 agents released at once cost a few thread wake-ups, not 10,000."""
        threads = 0
        with self._lock:
            if self._shutdown:
                raise RuntimeError("agentmesh: the agent server is stopped")
            jobs = collections.deque((fn, arg) for arg in args)
            while jobs and self._idle and wake > 0:
                waiter = self._idle.pop()
                waiter[1] = jobs.popleft()
                waiter[0].release()
                wake -= 1
            while jobs and wake > 0 and self._count + threads < self._max:
                threads += 1
                wake -= 1
            if jobs:
                self._backlog.extend(jobs)
                self._watch_backlog()
            start, self._count = self._count, self._count + threads
        for n in range(threads):
            threading.Thread(target=self._work, args=(None,), name=f"{self._name}_{start + n + 1}",
                             daemon=True).start()

    def _watch_backlog(self) -> None:
        """Jobs wait in the backlog (lock held): the monitor makes sure they do not wait behind slow ones."""
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name=f"{self._name}_monitor", daemon=True)
            self._monitor.start()
        elif self._monitor_idle:
            self._monitor_idle = False
            self._backlogged.notify()

    def _watch(self) -> None:
        """While the backlog is not empty: if no job left it for STALLED seconds (the busy threads run
        long calls), wake or start threads for the rest, so one slow agent never holds up the others."""
        with self._lock:
            taken, since = self._taken, time.monotonic()
            while not self._shutdown:
                if not self._backlog:
                    self._monitor_idle = True
                    self._backlogged.wait()
                    taken, since = self._taken, time.monotonic()
                    continue
                if self._taken != taken:
                    taken, since = self._taken, time.monotonic()
                left = since + STALLED - time.monotonic()
                if left > 0:
                    self._backlogged.wait(left)
                    continue
                self._add_threads_locked(len(self._backlog))
                taken, since = self._taken, time.monotonic()

    def _add_threads_locked(self, n: int) -> None:
        while n > 0 and self._backlog and self._idle:
            waiter = self._idle.pop()
            waiter[1] = self._backlog.popleft()
            self._taken += 1
            waiter[0].release()
            n -= 1
        while n > 0 and self._backlog and self._count < self._max:
            self._count += 1
            job = self._backlog.popleft()
            self._taken += 1
            threading.Thread(target=self._work, args=(job,), name=f"{self._name}_{self._count}", daemon=True).start()
            n -= 1

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def job(_: Any) -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                fut.set_exception(exc)

        self.run(job, None)
        return fut

    def _work(self, job: tuple | None) -> None:
        waiter = [threading.Lock(), None]
        waiter[0].acquire()
        while True:
            if job is not None:
                fn, arg = job
                try:
                    fn(arg)
                except BaseException:  # noqa: BLE001 - a worker must survive its job
                    log.exception("agent worker job failed")
            job = None
            with self._lock:
                if self._backlog:
                    job = self._backlog.popleft()
                    self._taken += 1
                elif self._shutdown:
                    self._count -= 1
                    return
                else:
                    self._idle.append(waiter)
            if job is None:
                waiter[0].acquire()
                job, waiter[1] = waiter[1], None
                if job is None:      # shut down
                    return

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            self._backlogged.notify_all()
            idle, self._idle = self._idle, []
            if cancel_futures:
                self._backlog.clear()
        for waiter in idle:
            waiter[1] = None
            waiter[0].release()
