"""Busy is not dead (issue 14): how fast a real stop is detected, and how much work moves nothing.

    python benchmarks/bench_busy.py                    # holds of 5, 30 and 60 s; 20 s of saturation; a 60 s call
    python benchmarks/bench_busy.py --holds 5 --saturate 5 --long 5     # quicker

A real etcd and two real registered servers (default settings: lease ttl 3 s,
fence_after 1.5 s), agents pinned to the first. Measured:

* **SIGSTOP detection**: a call in flight when its server is SIGSTOPped, until it
  is answered by the agent re-created on the other server (with a registry), or
  on a child server (without one); the median of --stops tries each.
* **GIL holds**: one agent holds the GIL in one C call for N s while a second
  agent on the same server is called: whether anything moved, the server's
  epoch and agent count after, how late the second agent answered, and
  whether the server's gRPC health check answered during the hold.
* **CPU saturation**: every core busy (hog processes) and four agents of the
  server spinning in Python, while a fifth is called in a loop: moves, calls
  answered, p99.
* **A long call**: one call sleeping --long s with default settings: moves.

Prints a Markdown table; every process it starts it stops.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

import agentmesh  # noqa: E402
from agentmesh.testing import EtcdProcess, default_runtime  # noqa: E402

import _common as C  # noqa: E402
from bench_agents import Busy  # noqa: E402
from _servers import launch, shutdown as kill_servers  # noqa: E402

TOKEN = "bench-busy-Zq4Xw8Rt1Vn6Km3Jb9Hc2Lp5Gf7Ds0Ay"
NAMESPACE = "busy"
MOVED = re.compile(r"^agent server (\S+) lost .*\): (\d+) agent\(s\) moved to")


class Moves(logging.Handler):
    """Counts the agents this process's proxies moved, by the server they left (from the one line per loss)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.moved: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        found = MOVED.match(record.getMessage())
        if found:
            self.moved[found.group(1)] = self.moved.get(found.group(1), 0) + int(found.group(2))

    def off(self, server) -> int:
        return self.moved.get(f"127.0.0.1:{server.port}", 0)


def _info(server):
    from agentmesh.testing import wire
    from agentmesh.v1 import agent_server_pb2 as pb
    from agentmesh.v1 import agent_server_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return pb_grpc.AgentServerStub(channel).GetInfo(
            pb.InfoRequest(), metadata=wire.authenticate(channel, server.token, server.namespace), timeout=120)


def _health_answers(server, timeout: float = 1.0) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return True
        except grpc.RpcError:
            return False


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not met within {timeout} s: {predicate}")
        time.sleep(0.01)


def sigstop(victim, moves: Moves, tries: int) -> dict:
    """A call in flight, SIGSTOP: seconds until it is answered elsewhere (median, max)."""
    took = []
    for i in range(tries):
        agent = Busy(f"stop{i}", to_dist={"host": "127.0.0.1", "port": victim.port})
        agent.inc()
        pending = agent.nap(0.2)
        _wait(lambda: _info(victim).inflight >= 1)
        os.kill(victim.pid, signal.SIGSTOP)
        stopped = time.perf_counter()
        try:
            pending.result(timeout=30)
            took.append(time.perf_counter() - stopped)
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        _wait(lambda: _info(victim).agents == 0)     # it dropped the moved agent (and only had that one)
    return {"median": statistics.median(took), "max": max(took), "moves": moves.off(victim), "tries": tries}


def gil_hold(server, moves: Moves, seconds: float) -> dict:
    busy, other = (Busy(f"{name}{seconds:g}", to_dist={"host": "127.0.0.1", "port": server.port})
                   for name in ("busy", "other"))
    busy.inc()
    other.inc()
    before, moved = _info(server), moves.off(server)
    cpu = _cpu(server.pid)
    held = busy.hold_gil(seconds)
    _wait(lambda: _cpu(server.pid) - cpu > 1.0)
    health = _health_answers(server)
    asked = time.perf_counter()
    second = other.inc()
    late = time.perf_counter() - asked
    hold = held.result(timeout=seconds * 4 + 60)
    after = _info(server)
    out = {"seconds": round(hold, 1), "moves": moves.off(server) - moved, "same_epoch": after.epoch == before.epoch,
           "agents_kept": after.agents == before.agents, "state_ok": second == 2 and busy.inc() == 2,
           "late": round(late, 1), "health": health}
    return out


def saturate(server, moves: Moves, seconds: float) -> dict:
    """Every core busy from outside, four agents spinning inside, a fifth called in a loop."""
    pinned = {"host": "127.0.0.1", "port": server.port}
    spinners = [Busy(f"spin{i}", to_dist=pinned) for i in range(4)]
    other = Busy("called", to_dist=pinned)
    other.inc()
    moved = moves.off(server)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        spinning = [s.spin(seconds) for s in spinners]
        lat = []
        while not all(s.done() for s in spinning):
            t = time.perf_counter()
            other.inc()
            lat.append(time.perf_counter() - t)
        for s in spinning:
            s.result()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return {"calls": len(lat), "p99_ms": round(C.pct(lat, 99) * 1e3, 1), "max_ms": round(max(lat) * 1e3, 1),
            "moves": moves.off(server) - moved, "state_ok": other.inc() == len(lat) + 2}


def long_call(server, moves: Moves, seconds: float) -> dict:
    agent = Busy("long", to_dist={"host": "127.0.0.1", "port": server.port})
    moved = moves.off(server)
    value = agent.nap(seconds).result(timeout=seconds + 60)
    return {"seconds": seconds, "moves": moves.off(server) - moved, "state_ok": value == 1}


def measure(holds: list[float], saturate_s: float, long_s: float, stops: int) -> list[tuple[str, str]]:
    moves = Moves()
    logger = logging.getLogger("agentmesh")
    logger.addHandler(moves)
    logger.setLevel(logging.INFO)
    rows: list[tuple[str, str]] = []
    runtime = default_runtime()
    with EtcdProcess(name="agentmesh-bench-busy") as etcd:
        started: list = []
        try:
            launch(2, classes=(Busy,), into=started, capacity=64, registry=etcd.url, namespace=NAMESPACE,
                   token=TOKEN)
            agentmesh.init(registry=etcd.url, namespace=NAMESPACE, token=TOKEN)
            first, _second = started
            s = sigstop(first, moves, stops)
            rows.append((f"SIGSTOP, a call in flight: answered on the other server (registry; {s['tries']} tries)",
                         f"median {s['median']:.2f} s, max {s['max']:.2f} s; {s['moves']} agent(s) moved"))
            for seconds in holds:
                g = gil_hold(first, moves, seconds)
                rows.append((f"GIL held {g['seconds']:.1f} s in one C call (lease ttl 3 s, fence_after 1.5 s)",
                             f"{g['moves']} moved; epoch {'kept' if g['same_epoch'] else 'CHANGED'}, agents "
                             f"{'kept' if g['agents_kept'] else 'DROPPED'}, state {'right' if g['state_ok'] else 'WRONG'};"
                             f" neighbour answered after {g['late']:.1f} s; health check during the hold "
                             f"{'answered' if g['health'] else 'unanswered (1 s)'}"))
            if saturate_s:
                c = saturate(first, moves, saturate_s)
                rows.append((f"{os.cpu_count()} cores saturated + 4 agents spinning {saturate_s:g} s, a 5th called",
                             f"{c['moves']} moved; {c['calls']:,} calls, p99 {c['p99_ms']} ms, max {c['max_ms']} ms,"
                             f" state {'right' if c['state_ok'] else 'WRONG'}"))
            if long_s:
                long = long_call(first, moves, long_s)
                rows.append((f"one call sleeping {long_s:g} s, default settings",
                             f"{long['moves']} moved, answered {'right' if long['state_ok'] else 'WRONG'}"))
        finally:
            logger.removeHandler(moves)
            runtime.configure(registry=None)
            kill_servers(started)
    server = None
    try:   # without a registry: the owner re-creates the agent on a child server
        server = launch(1, classes=(Busy,), capacity=64)[0]
        s = sigstop(server, moves, stops)
        rows.append((f"SIGSTOP, a call in flight: answered on a child server (no registry; {s['tries']} tries)",
                     f"median {s['median']:.2f} s, max {s['max']:.2f} s"))
    finally:
        if server is not None:
            kill_servers([server])
        agentmesh.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holds", default="5,30,60", help="GIL holds to try (s, comma list)")
    parser.add_argument("--saturate", type=float, default=20.0, help="seconds of CPU saturation (0: skip)")
    parser.add_argument("--long", type=float, default=60.0, help="seconds of the long call (0: skip)")
    parser.add_argument("--stops", type=int, default=3, help="SIGSTOP tries per mode")
    args = parser.parse_args()
    rows = measure([float(h) for h in args.holds.split(",") if h], args.saturate, args.long, args.stops)
    print(f"\n| busy vs stopped, {os.cpu_count()} cores | |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
