"""Call-path micro-benchmark: sync no-op round trips (checkpoint on/off) and pipelined throughput.

    python benchmarks/bench_syncpath.py [--n 3000] [--inflight 1000] [--rounds 10] [--label X]

Starts one agent server subprocess on 127.0.0.1, creates two Noop agents on it
(checkpoint on, checkpoint off), and prints one JSON line:
  sync_ck_* / sync_nock_*: median and p99 round trip (µs) and calls/s of ping(), one after another
  pipe_calls_s: median over rounds of 1,000 aping() calls in flight, then waiting for all
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from agentmesh import RpcAgentServerLauncher  # noqa: E402
from bench_agents import Noop  # noqa: E402


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def sync(agent, n):
    ping = agent.ping
    for _ in range(300):
        ping()
    lat = []
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        s = clock()
        ping()
        lat.append(clock() - s)
    wall = (clock() - t0) / 1e9
    return round(statistics.median(lat) / 1e3, 1), round(pct(lat, 0.99) / 1e3, 1), round(n / wall)


def pipe(agent, inflight, rounds):
    aping = agent.aping
    rates = []
    for r in range(rounds + 1):
        t = time.perf_counter()
        results = [aping(i) for i in range(inflight)]
        for res in results:
            res.result()
        if r:
            rates.append(inflight / (time.perf_counter() - t))
    return round(statistics.median(rates))


def pin_all_threads(pid: int, cpu: int) -> None:
    """Pin every thread of process pid to one CPU (sched_setaffinity of a pid pins only that thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--inflight", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--label", default="")
    ap.add_argument("--pidfile", default="", help="write 'client_pid server_pid' here (profiling)")
    ap.add_argument("--only", default="", help="ck, nock or pipe")
    ap.add_argument("--pin", action="store_true", help="client on CPU 0, server on CPU 1 (every thread)")
    args = ap.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})
    launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=8)
    launcher.launch(in_subprocess=True)
    if args.pin:
        pin_all_threads(launcher.pid, 1)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()} {launcher.pid}\n")
    out = {"label": args.label}
    try:
        ck = Noop("ck").to_dist(host="127.0.0.1", port=launcher.port)
        nock = Noop("nock").to_dist(host="127.0.0.1", port=launcher.port, checkpoint=False)
        if args.only in ("", "ck"):
            out["ck_med"], out["ck_p99"], out["ck_cps"] = sync(ck, args.n)
        if args.only in ("", "nock"):
            out["nock_med"], out["nock_p99"], out["nock_cps"] = sync(nock, args.n)
        if args.only in ("", "pipe"):
            out["pipe_ck"] = pipe(ck, args.inflight, args.rounds)
            out["pipe_nock"] = pipe(nock, args.inflight, args.rounds)
        del ck, nock   # no proxy left: the server's shutdown moves nothing
        gc.collect()
    finally:
        launcher.shutdown()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
