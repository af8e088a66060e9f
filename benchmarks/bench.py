"""agentmesh benchmarks: call path, tutorial, registry placement, registry recovery.

    python benchmarks/bench.py            # full sizes
    python benchmarks/bench.py --quick    # tiny sizes (the test suite's smoke run)

Prints a Markdown table. Every process it starts it stops. Peers (AgentScope,
Ray) join this harness with the benchmark issue.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import agentmesh  # noqa: E402
from agentmesh import RpcAgentServerLauncher  # noqa: E402
from agentmesh._config import settings  # noqa: E402
from agentmesh.discovery import keys  # noqa: E402
from agentmesh.discovery.etcd import EtcdClient  # noqa: E402
from agentmesh.discovery.etcd_server import EtcdProcess  # noqa: E402
from bench_agents import Noop  # noqa: E402

rows: list[tuple[str, str, str]] = []


def report(workload: str, value: str, how: str) -> None:
    rows.append((workload, value, how))
    print(f"{workload}: {value}  ({how})", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def bench_call_path(n_sync: int, n_async: int, rounds: int) -> None:
    launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=8)
    launcher.launch(in_subprocess=True)
    try:
        agent = Noop("n").to_dist(host="127.0.0.1", port=launcher.port)
        for _ in range(200):
            agent.ping()
        lat = []
        for _ in range(n_sync):
            t = time.perf_counter()
            agent.ping()
            lat.append(time.perf_counter() - t)
        report("sync no-op call, median / p99 round trip",
               f"{statistics.median(lat) * 1e6:.0f} µs / {pct(lat, 0.99) * 1e6:.0f} µs",
               f"{n_sync} calls of ping() one after another from one thread, after 200 warm-up calls")
        report("sync no-op calls/s", f"{n_sync / sum(lat):,.0f}", "same loop")
        rates = []
        for _ in range(rounds):
            t = time.perf_counter()
            results = [agent.aping(i) for i in range(n_async)]
            for r in results:
                r.result()
            rates.append(n_async / (time.perf_counter() - t))
        report(f"async no-op calls/s, {n_async} in flight",
               f"{statistics.median(rates):,.0f}",
               f"median of {rounds} rounds: submit {n_async} @async_func calls, then wait for all")
    finally:
        launcher.shutdown()


def bench_registry(n_warm: int, n_bulk: int) -> None:
    with EtcdProcess(name="agentmesh-bench") as etcd:
        servers = [RpcAgentServerLauncher(host="127.0.0.1", capacity=n_bulk + n_warm, registry=etcd.url,
                                          namespace="bench") for _ in range(4)]
        for s in servers:
            s.launch(in_subprocess=True)
        try:
            agentmesh.init(registry=etcd.url, namespace="bench")
            Noop("warm-up").to_dist()
            lat = []
            for i in range(n_warm):
                t = time.perf_counter()
                Noop(f"w{i}").to_dist()
                lat.append(time.perf_counter() - t)
            report("warm registry-resolved to_dist(), median per agent",
                   f"{statistics.median(lat) * 1e3:.2f} ms",
                   f"{n_warm} agents one after another, 4 servers, view already watching")
            t = time.perf_counter()
            for i in range(n_bulk):
                Noop(f"b{i}").to_dist()
            took = time.perf_counter() - t
            report(f"{n_bulk} registry placements across 4 servers", f"{took:.2f} s",
                   "one thread, to_dist() with no host")
            victim = servers[0]
            key = keys.server_key("bench", victim.server_id)

            async def present(k: str) -> bool:
                client = EtcdClient.from_url(etcd.url)
                try:
                    return await client.get(k) is not None
                finally:
                    await client.close()

            os.kill(victim.pid, signal.SIGKILL)
            t = time.perf_counter()
            while asyncio.run(present(key)) and time.perf_counter() - t < 10:
                time.sleep(0.02)
            report("SIGKILL of a server -> its key gone", f"{time.perf_counter() - t:.2f} s",
                   "lease TTL 3 s (default); polled every 20 ms")
            etcd.stop()
            etcd.start(data_dir=os.path.join(etcd.data_dir + "-wiped"), client_port=etcd.client_port)
            t = time.perf_counter()
            want = [keys.server_key("bench", s.server_id) for s in servers[1:]]
            while not all(asyncio.run(present(k)) for k in want) and time.perf_counter() - t < 20:
                time.sleep(0.02)
            report("etcd restarted empty -> every server registered again", f"{time.perf_counter() - t:.2f} s",
                   "3 live servers; etcd stopped and restarted on the same port with a new data dir")
        finally:
            settings.registry = None
            for s in servers:
                try:
                    s.shutdown()
                except Exception:  # noqa: BLE001 - the killed one
                    pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    args = parser.parse_args()
    if args.quick:
        bench_call_path(50, 50, 2)
        bench_registry(10, 20)
    else:
        bench_call_path(3000, 1000, 5)
        bench_registry(200, 1000)
    print(f"\nagentmesh {agentmesh.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs\n")
    print("| workload | agentmesh | how measured |\n| --- | --- | --- |")
    for workload, value, how in rows:
        print(f"| {workload} | {value} | {how} |")


if __name__ == "__main__":
    main()
