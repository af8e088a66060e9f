"""What security costs on the call path: a sync no-op call through a proxy, plain / token / TLS / both.

    python benchmarks/bench_security.py               # 3000 calls per configuration
    python benchmarks/bench_security.py --calls 500   # quicker

Every configuration gets its own server process (RpcAgentServerLauncher,
in_subprocess=True) and its own connection; calls are measured in blocks that
take turns between the configurations, so drift on the machine hits all of
them alike. Certificates come from scripts/make-local-ca in a temporary
directory. Prints a Markdown table; every process it starts it stops.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import grpc  # noqa: E402

from agentmesh import RpcAgentServerLauncher  # noqa: E402
from agentmesh._client.connection import Connection  # noqa: E402
from agentmesh.testing import default_runtime  # noqa: E402
from bench_agents import Noop  # noqa: E402

TOKEN = "bench-Ty6Qn2Zx8Wr4Vc1Km7Jb3Hp9Lg5Fd0Es"


def make_certs(folder: str) -> dict[str, str]:
    subprocess.run([os.path.join(ROOT, "scripts", "make-local-ca"), folder], check=True,
                   stdout=subprocess.DEVNULL)
    return {name: os.path.join(folder, name) for name in
            ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def configurations(certs: dict[str, str]) -> list[tuple[str, dict, dict]]:
    """(name, launcher options, client settings) for each row."""
    server_tls = {"tls_cert": certs["server.crt"], "tls_key": certs["server.key"]}
    client_tls = {"tls_ca": certs["ca.crt"], "tls_cert": None, "tls_key": None}
    plain_client = {"tls_ca": None, "tls_cert": None, "tls_key": None}
    return [
        ("plain", {"tls_cert": ""}, {**plain_client, "token": None}),
        ("token", {"tls_cert": "", "token": TOKEN}, {**plain_client, "token": TOKEN}),
        ("TLS", server_tls, {**client_tls, "token": None}),
        ("TLS + token", {**server_tls, "token": TOKEN}, {**client_tls, "token": TOKEN}),
        ("mutual TLS", {**server_tls, "tls_client_ca": certs["ca.crt"]},
         {"tls_ca": certs["ca.crt"], "tls_cert": certs["client.crt"], "tls_key": certs["client.key"],
          "token": None}),
    ]


def apply(values: dict) -> None:
    default_runtime().configure(**values)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def session_setup(address: str, times: int) -> float:
    """Median seconds to open a fresh session (dial, authenticate, Hello) to address and close it again."""
    runtime = default_runtime()

    async def once() -> float:
        conn = Connection(address, runtime.loop, runtime.pool.dialing)
        start = time.perf_counter()
        await conn.open(5.0)
        took = time.perf_counter() - start
        await conn.close()
        return took

    return statistics.median(runtime.loop.run(once()) for _ in range(times))


def measure(servers: list[tuple[str, int, dict]], calls: int, warmup: int, block: int) -> list[tuple[str, ...]]:
    """One proxy per server, connected with that row's client settings; the table's rows."""
    agents = []
    for name, port, client_settings in servers:
        apply(client_settings)
        start = time.perf_counter()
        agent = Noop("n").to_dist(host="127.0.0.1", port=port)     # its connection keeps these settings
        agent.ping()
        first = time.perf_counter() - start
        for _ in range(warmup):
            agent.ping()
        setup = session_setup(f"127.0.0.1:{port}", 30)
        agents.append((name, agent, first, setup, []))
    done = 0
    while done < calls:
        n = min(block, calls - done)
        for _, agent, _, _, lat in agents:
            for _ in range(n):
                t = time.perf_counter()
                agent.ping()
                lat.append(time.perf_counter() - t)
        done += n
    base = statistics.median(agents[0][4])
    rows = []
    for name, _, first, setup, lat in agents:
        median = statistics.median(lat)
        rows.append((name, f"{median * 1e6:.0f}", f"{pct(lat, 0.99) * 1e6:.0f}", f"{len(lat) / sum(lat):,.0f}",
                     f"{(median - base) * 1e6:+.0f}", f"{setup * 1e3:.2f}", f"{first * 1e3:.1f}"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per configuration")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured calls per configuration first")
    parser.add_argument("--block", type=int, default=250, help="calls per turn")
    args = parser.parse_args()

    settings = default_runtime().settings
    saved = {name: getattr(settings, name) for name in ("tls_ca", "tls_cert", "tls_key", "token")}
    launchers: list[RpcAgentServerLauncher] = []
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-pki-") as pki:
        try:
            servers = []
            for name, server_options, client_settings in configurations(make_certs(pki)):
                apply(client_settings)
                launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=4, **server_options)
                launcher.launch(in_subprocess=True)
                launchers.append(launcher)
                servers.append((name, launcher.port, client_settings))
            rows = measure(servers, args.calls, args.warmup, args.block)
            gc.collect()             # the proxies are gone: nothing moves when the servers drain
        finally:
            apply(saved)
            for launcher in launchers:
                launcher.shutdown()

    print(f"Sync no-op call through a proxy (Noop.ping), {args.calls} calls per row after {args.warmup} "
          f"warm-up calls, in turns of {args.block}; one server process per row on 127.0.0.1.")
    print(f"Python {platform.python_version()}, grpcio {grpc.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.machine()}.\n")
    print("| configuration | median µs | p99 µs | calls/s | median vs plain µs | session set-up ms (median of 30) "
          "| first proxy: connect + create + first call ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
