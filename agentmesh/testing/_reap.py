"""Ending a process a test fixture started: the one way both the etcd and the PostgreSQL fixtures stop theirs."""
from __future__ import annotations

import os
import signal
import subprocess


def end_process(proc: subprocess.Popen | None, sig: int, grace: float) -> None:
    """Send sig, SIGKILL after ``grace`` s if it still runs, and always reap it (None: nothing to end)."""
    if proc is None:
        return
    try:
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        proc.wait()
