"""Scale as a user meets it: many agents over registered servers, one server SIGKILLed, then shutdown.

    python benchmarks/bench_scale.py                     # 10,000 agents over 4 servers (issue 12's finding)
    python benchmarks/bench_scale.py --agents 2000       # quicker

A real etcd and real server processes (capacity: all the agents and one more,
each); agents are
placed through the registry with to_dist(). Measured: placement rate, one
synchronous call to each, server RSS per agent, etcd agent records; then the
server hosting the most agents is SIGKILLed and every one of its agents is
called (asynchronously, all at once): the first answer, the last, wrong
answers, WARNING lines; finally agentmesh.shutdown(). Prints a Markdown
table; every process it starts it stops. run.py's "scale" workload calls
measure() for its rows in RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import agentmesh  # noqa: E402
from agentmesh.discovery import keys  # noqa: E402
from agentmesh.testing import EtcdProcess, default_runtime  # noqa: E402

import _common as C  # noqa: E402
from _servers import launch, shutdown as kill_servers  # noqa: E402
from bench_agents import Noop  # noqa: E402

TOKEN = "bench-scale-Wn5Qz9Xr2Tc7Vm4Kb8Jh1Lp6Gf3Ds0Ay"
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


def _profile(pids: dict[str, int], folder: str) -> list:
    """py-spy (if installed) samples each process for 8 s into folder/<role>.txt (collapsed stacks)."""
    os.makedirs(folder, exist_ok=True)
    spies = [subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "250", "--duration", "8",
                               "--nonblocking", "--gil", "--format", "raw", "-o", os.path.join(folder, f"{role}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for role, pid in pids.items()]
    time.sleep(1.0)   # py-spy attaches
    return spies


def _kill_and_call(agents: list, by_port: dict, counting: Counting, out: dict, profile: str = "") -> None:
    """SIGKILL the server hosting the most agents, call each of its agents at once, time the answers."""
    placed = collections.Counter(a.server for a in agents)
    victim_address, hosted = placed.most_common(1)[0]
    victim = by_port[int(victim_address.rsplit(":", 1)[1])]
    on_victim = [(i, a) for i, a in enumerate(agents) if a.server == victim_address]
    spies = []
    if profile:
        roles = {f"server-{port}": s.pid for port, s in by_port.items() if s is not victim}
        spies = _profile({"client": os.getpid(), **roles}, profile)
    counting.levels.clear()
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.perf_counter()
    pending = [(i, a.aping(i)) for i, a in on_victim]
    made = time.perf_counter() - killed
    first = None
    wrong = 0
    for i, result in pending:
        value = result.result()
        if first is None:
            first = time.perf_counter() - killed
        wrong += value != i
    out.update(kill_hosted=hosted, kill_made=round(made, 3), kill_first=round(first, 3),
               kill_all=round(time.perf_counter() - killed, 3), kill_wrong=wrong,
               kill_targets=len({a.server for _, a in on_victim}))
    time.sleep(0.5)   # the one summary line is written once the moves have settled
    out.update(kill_warnings=counting.levels["WARNING"], kill_info=counting.levels["INFO"])
    for spy in spies:
        spy.wait()


def measure(n: int, servers: int, capacity: int = 0, calls: bool = True, kill: bool = True,
            profile: str = "") -> dict:
    """n agents placed over `servers` registered servers; the numbers of the module docstring."""
    out: dict = {"agents": n, "servers": servers}
    counting = Counting()
    logger = logging.getLogger("agentmesh")
    logger.addHandler(counting)
    logger.setLevel(logging.INFO)
    with EtcdProcess(name="agentmesh-bench-scale") as etcd:
        started: list = []
        try:
            launch(servers, classes=(Noop,), into=started, capacity=capacity or n + 1, registry=etcd.url,
                   namespace=NAMESPACE, token=TOKEN)
            by_port = {s.port: s for s in started}
            agentmesh.init(registry=etcd.url, namespace=NAMESPACE, token=TOKEN)
            Noop("warm-up").to_dist().ping()
            rss0 = {s.pid: C.rss_kb(s.pid) for s in started}
            mine = C.rss_kb(os.getpid())
            t = time.perf_counter()
            agents = [Noop(f"a{i}").to_dist() for i in range(n)]
            took = time.perf_counter() - t
            out.update(proxy_kb=round((C.rss_kb(os.getpid()) - mine) / n, 2), to_dist_s=round(took, 3),
                       to_dist_rate=round(n / took))
            if calls:
                t = time.perf_counter()
                out["call_wrong"] = sum(a.ping(i) != i for i, a in enumerate(agents))
                out["call_rate"] = round(n / (time.perf_counter() - t))
                out["ckpt_bytes"] = round(sum(len(a._binding.checkpoint.state) for a in agents) / n)
            else:   # the creations are pipelined: wait for the last one before measuring memory
                agents[-1].ping(0)
            out["server_kb"] = round(sum(C.rss_kb(s.pid) - rss0[s.pid] for s in started) / n, 2)
            out["records"] = asyncio.run(_count(etcd.url, keys.agents_prefix(NAMESPACE)))
            if kill:
                _kill_and_call(agents, by_port, counting, out, profile)
            t = time.perf_counter()
            try:
                agentmesh.shutdown()
                out["shutdown_error"] = ""
            except BaseException as exc:  # noqa: BLE001 - the finding: what shutdown raised
                out["shutdown_error"] = f"{type(exc).__name__}: {exc}"
            out["shutdown_s"] = round(time.perf_counter() - t, 3)
        finally:
            logger.removeHandler(counting)
            default_runtime().configure(registry=None)
            kill_servers(started)
    return out


def rows_of(m: dict) -> list[tuple[str, str]]:
    """The measurements of measure() as (what, value) rows."""
    n = m["agents"]
    rows = [("client RSS per proxy", f"{m['proxy_kb']:.2f} KB"),
            (f"{n:,} to_dist() through the registry", f"{m['to_dist_s']:.2f} s ({m['to_dist_rate']:,}/s)")]
    if "call_rate" in m:
        rows += [(f"one sync call to each ({m['call_wrong']} wrong)", f"{m['call_rate']:,}/s"),
                 ("client: checkpoint held per agent", f"{m['ckpt_bytes']:,} bytes of state")]
    rows += [("server RSS per agent", f"{m['server_kb']:.2f} KB"), ("agent records in etcd", f"{m['records']:,}")]
    if "kill_all" in m:
        rows += [(f"SIGKILL of the server of {m['kill_hosted']:,} agents: calls made (asynchronous)",
                  f"{m['kill_made']:.2f} s"),
                 ("... first answer", f"{m['kill_first']:.2f} s"),
                 (f"... all answered ({m['kill_wrong']} wrong, now on {m['kill_targets']} server(s))",
                  f"{m['kill_all']:.2f} s"),
                 ("... log lines (WARNING / INFO)", f"{m['kill_warnings']:,} / {m['kill_info']:,}")]
    rows.append((f"agentmesh.shutdown() with {n:,} owned agents",
                 f"{m['shutdown_s']:.2f} s, {m['shutdown_error'] or 'ok'}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=0, help="of each server (default: agents + 1, room for "
                                                                 "all of them and the warm-up agent on one)")
    parser.add_argument("--no-calls", action="store_true", help="skip the sync call to each agent")
    parser.add_argument("--no-kill", action="store_true", help="skip the SIGKILL")
    parser.add_argument("--profile", default="", help="folder: py-spy profiles of the failover (client, survivors)")
    args = parser.parse_args()
    m = measure(args.agents, args.servers, args.capacity, not args.no_calls, not args.no_kill, args.profile)
    print(f"\n| {args.agents:,} agents, {args.servers} servers, {os.cpu_count()} cores | |\n|---|---|")
    for name, value in rows_of(m):
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
