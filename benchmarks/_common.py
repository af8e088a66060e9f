"""Helpers shared by the workload modules. Standard library only: every peer's
interpreter imports this file (the workload scripts run from this directory).

A workload module is run as

    <python> benchmarks/workloads_<system>.py <workload> '<sizes as JSON>'

and prints one line ``@@RESULT {json}`` on stdout: ``{"metrics": {...},
"notes": [...], "info": {...}}``. A metric is a number or
``{"median": x, "p99": y}``.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
import traceback
from typing import Any, Callable

RESULT_MARK = "@@RESULT "

#: the payload of the payload workload: 100 KB
PAYLOAD_BYTES = 100 * 1024

#: the payload workload's echoes: (metric, bytes, share of payload_calls made at that size)
PAYLOADS = (("rtt", PAYLOAD_BYTES, 1.0), ("rtt_1mb", 1024 * 1024, 0.2), ("rtt_10mb", 10 * 1024 * 1024, 0.04))


def echo_sizes(echo: Callable[[bytes], Any], sz: dict) -> dict:
    """The payload workload, the same for every system: echo(data) of 100 KB, 1 MB and 10 MB of random bytes,
    one after another; the round trip of each size. A size the system refuses is a note, not a failure."""
    metrics: dict = {}
    notes: list[str] = []
    for metric, size, share in PAYLOADS:
        data = os.urandom(size)
        try:
            assert echo(data) == data
        except Exception as exc:  # noqa: BLE001 - its limit: say what it does
            notes.append(f"echo of {size // 1024} KB: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            continue
        time_loop(lambda: echo(data), max(1, int(sz["payload_warmup"] * share)))
        lat, wall = time_loop(lambda: echo(data), max(3, int(sz["payload_calls"] * share)))
        metrics[metric] = dist(lat, 1e6)
        if metric == "rtt":
            metrics["rate"] = round(len(lat) / wall, 1)
    return {"metrics": metrics, "notes": notes}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def dist(values: list[float], scale: float = 1.0, digits: int = 1) -> dict:
    """median and p99 of values, multiplied by scale."""
    return {"median": round(statistics.median(values) * scale, digits),
            "p99": round(pct(values, 0.99) * scale, digits), "n": len(values)}


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status (kB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pss_kb(pid: int) -> int | None:
    """Proportional set size (shared pages split between their users), if the kernel tells."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def time_loop(fn: Callable[[], Any], n: int) -> tuple[list[float], float]:
    """Call fn n times; per-call seconds and the loop's wall time."""
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return lat, time.perf_counter() - start


def sync_metrics(lat: list[float], wall: float) -> dict:
    return {"rtt": dist(lat, 1e6), "rate": round(len(lat) / wall, 1)}


def run_rounds(round_fn: Callable[[], int], rounds: int) -> dict:
    """round_fn() does some calls and returns how many; the median rate over rounds."""
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        n = round_fn()
        rates.append(n / (time.perf_counter() - t))
    return {"median": round(statistics.median(rates), 1), "rounds": rounds,
            "min": round(min(rates), 1), "max": round(max(rates), 1)}


def nn_threads(call: Callable[[int, int], Any], callers: int, agents: int, calls_per_caller: int) -> dict:
    """callers threads; thread t calls agent (t + j) % agents for j in range(calls_per_caller), synchronously."""
    import threading

    barrier = threading.Barrier(callers + 1)
    lat: list[list[float]] = [[] for _ in range(callers)]
    errors: list[BaseException] = []

    def caller(t: int) -> None:
        barrier.wait()
        try:
            mine = lat[t]
            for j in range(calls_per_caller):
                s = time.perf_counter()
                call(t, (t + j) % agents)
                mine.append(time.perf_counter() - s)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(t,), daemon=True) for t in range(callers)]
    for th in threads:
        th.start()
    barrier.wait()
    start = time.perf_counter()
    for th in threads:
        th.join(600)
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    every = [x for part in lat for x in part]
    return {"rate": round(len(every) / wall, 1), "rtt": dist(every, 1e6)}


def main(workloads: dict[str, Callable[[dict], dict]], info: Callable[[], dict]) -> None:
    """Entry point of a workload module: run the workload named in argv, print its result, exit."""
    name = sys.argv[1]
    sizes = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    out: dict[str, Any] = {"workload": name}
    code = 0
    try:
        out["info"] = info()
        result = workloads[name](sizes)
        out["metrics"] = result.pop("metrics")
        out["notes"] = result.pop("notes", [])
        out.update(result)
    except BaseException as exc:  # noqa: BLE001 - the harness shows the error in the table
        traceback.print_exc()
        out["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        code = 1
    sys.stdout.write(RESULT_MARK + json.dumps(out) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the servers were stopped by the workload; what a library's
    # atexit hooks would do (delete thousands of agents one by one, join pools) is not measured
    # and could hang. The harness kills whatever this process left behind.
    os._exit(code)


def marked_pids(entry: str) -> list[int]:
    """Processes other than this one whose environment holds entry ("NAME=value"): everything a run started."""
    needle = entry.encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def kill_marked(entry: str) -> int:
    """SIGKILL every process marked with entry (looking again: a dying tree can start a last child); how many."""
    killed = 0
    for _ in range(5):
        pids = marked_pids(entry)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.2)
    return killed
