"""Scale as a user meets it: many agents over registered servers, one server SIGKILLed, then shutdown.

    python benchmarks/bench_scale.py                     # 10,000 agents over 4 servers (issue 12's finding)
    python benchmarks/bench_scale.py --agents 2000       # quicker

A real etcd and real server processes (capacity = agents each); agents are
placed through the registry with to_dist(). Measured: placement rate, one
synchronous call to each, server RSS per agent, etcd agent records; then the
server hosting the most agents is SIGKILLed and every one of its agents is
called (asynchronously, all at once): the first answer, the last, wrong
answers, WARNING lines; finally agentmesh.shutdown(). Prints a Markdown
table; every process it starts it stops.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import agentmesh  # noqa: E402
from agentmesh.discovery import keys  # noqa: E402
from agentmesh.testing import EtcdProcess, default_runtime  # noqa: E402

import _common as C  # noqa: E402
from workloads_agentmesh import launch, shutdown as kill_servers  # noqa: E402
from bench_agents import Noop  # noqa: E402

TOKEN = "bench-scale-token"
NAMESPACE = "scale"


class Counting(logging.Handler):
    """Counts agentmesh's log records by level."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.levels: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.levels[record.levelname] += 1


async def _count(url: str, prefix: str) -> int:
    from agentmesh.etcd import EtcdClient

    client = EtcdClient.from_url(url, **default_runtime().settings.etcd_options())
    try:
        return len((await client.get_prefix(prefix))[0])
    finally:
        await client.close()


def _kill_and_call(agents: list, by_port: dict, counting: Counting, rows: list) -> None:
    """SIGKILL the server hosting the most agents, call each of its agents at once, time the answers."""
    placed = collections.Counter(a.server for a in agents)
    victim_address, hosted = placed.most_common(1)[0]
    victim = by_port[int(victim_address.rsplit(":", 1)[1])]
    on_victim = [(i, a) for i, a in enumerate(agents) if a.server == victim_address]
    counting.levels.clear()
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.perf_counter()
    pending = [(i, a.aping(i)) for i, a in on_victim]
    first = None
    wrong = 0
    for i, result in pending:
        value = result.result()
        if first is None:
            first = time.perf_counter() - killed
        wrong += value != i
    last = time.perf_counter() - killed
    moved_to = len({a.server for _, a in on_victim})
    rows.append((f"SIGKILL of the server of {hosted:,} agents: first answer", f"{first:.2f} s"))
    rows.append((f"... all {len(pending):,} answered ({wrong} wrong, now on {moved_to} server(s))",
                 f"{last:.2f} s"))
    rows.append(("... log lines (WARNING / INFO)",
                 f"{counting.levels['WARNING']:,} / {counting.levels['INFO']:,}"))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--no-calls", action="store_true", help="skip the sync call to each agent")
    parser.add_argument("--no-kill", action="store_true", help="skip the SIGKILL")
    args = parser.parse_args()
    n = args.agents
    rows: list[tuple[str, str]] = []
    counting = Counting()
    logging.getLogger("agentmesh").addHandler(counting)
    logging.getLogger("agentmesh").setLevel(logging.INFO)
    with EtcdProcess(name="agentmesh-bench-scale") as etcd:
        servers = []
        try:
            launch(args.servers, classes=(Noop,), into=servers, capacity=n, registry=etcd.url,
                   namespace=NAMESPACE, token=TOKEN)
            by_port = {s.port: s for s in servers}
            agentmesh.init(registry=etcd.url, namespace=NAMESPACE, token=TOKEN)
            Noop("warm-up").to_dist().ping()
            rss0 = {s.pid: C.rss_kb(s.pid) for s in servers}

            mine = C.rss_kb(os.getpid())
            t = time.perf_counter()
            agents = [Noop(f"a{i}").to_dist() for i in range(n)]
            took = time.perf_counter() - t
            rows.append(("client RSS per proxy", f"{(C.rss_kb(os.getpid()) - mine) / n:.2f} KB"))
            rows.append((f"{n:,} to_dist() through the registry", f"{took:.2f} s ({n / took:,.0f}/s)"))
            if not args.no_calls:
                t = time.perf_counter()
                wrong = sum(a.ping(i) != i for i, a in enumerate(agents))
                took = time.perf_counter() - t
                rows.append((f"one sync call to each ({wrong} wrong)", f"{took:.2f} s ({n / took:,.0f}/s)"))
                held = [len(a._binding.ckpt[1]) for a in agents]
                rows.append(("client: checkpoint held per agent", f"{sum(held) / n:,.0f} bytes of state"))
            else:   # the creations are pipelined: wait for the last one before measuring memory
                agents[-1].ping(0)
            grown = sum(C.rss_kb(s.pid) - rss0[s.pid] for s in servers)
            rows.append(("server RSS per agent", f"{grown / n:.2f} KB"))
            records = asyncio.run(_count(etcd.url, keys.agents_prefix(NAMESPACE)))
            rows.append(("agent records in etcd", f"{records:,}"))

            if not args.no_kill:
                _kill_and_call(agents, by_port, counting, rows)

            t = time.perf_counter()
            try:
                agentmesh.shutdown()
                outcome = "ok"
            except BaseException as exc:  # noqa: BLE001 - the finding: what shutdown raised
                outcome = f"raised {type(exc).__name__}: {exc}"
            rows.append((f"agentmesh.shutdown() with {n:,} owned agents", f"{time.perf_counter() - t:.2f} s, "
                                                                          f"{outcome}"))
        finally:
            default_runtime().configure(registry=None)
            kill_servers(servers)
    print(f"\n| {n:,} agents, {args.servers} servers, {os.cpu_count()} cores | |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
