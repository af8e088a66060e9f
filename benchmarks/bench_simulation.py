"""The "guess 2/3 of the average" game (examples/simulation) at 1,000, 10,000 and 100,000 participants.

    python benchmarks/bench_simulation.py                         # N = 1,000, 10,000 and 100,000
    python benchmarks/bench_simulation.py --sizes 1000,10000      # quicker
    python benchmarks/bench_simulation.py --one-round 1000000     # one round of a million (issue 27)

For each N: a real etcd and 4 registered server processes (fresh ones per N),
the participants placed through the registry; measured are set-up (placing
and building every participant), a round (every participant answers; the
median of 3), the servers' memory per participant, and a round during which
the server hosting the most participants is SIGKILLed right after the
round's calls were sent (every answer still arrives, from the agents
re-created elsewhere from their checkpoints). Prints a Markdown table;
every process it starts it stops. run.py's "simulation" workload calls
one_size() for its rows in RESULTS.md.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import statistics
import sys
import time
from typing import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples", "simulation"))

import agentmesh  # noqa: E402
from agentmesh.testing import EtcdProcess, default_runtime  # noqa: E402

import _common as C  # noqa: E402
from _servers import launch, shutdown as kill_servers  # noqa: E402
from guess import Participant, play_round, setup  # noqa: E402

TOKEN = "bench-sim-Ux7Qz3Wn9Xr5Tc1Vm8Kb4Jh2Lp6Gf0Ds"
SERVERS = 4


@contextlib.contextmanager
def _game(n: int, namespace: str) -> Iterator[tuple[EtcdProcess, list]]:
    """A real etcd and SERVERS registered server processes with room for n participants, this process placing
    through them; every process stopped afterwards."""
    with EtcdProcess(name=f"agentmesh-bench-{namespace}") as etcd:
        servers: list = []
        try:
            launch(SERVERS, classes=(Participant,), into=servers, capacity=n, registry=etcd.url,
                   namespace=namespace, token=TOKEN)
            agentmesh.init(registry=etcd.url, namespace=namespace, token=TOKEN)
            Participant("warm-up", 0).to_dist().rounds_played()
            yield etcd, servers
        finally:
            default_runtime().configure(registry=None)
            kill_servers(servers)


def one_size(n: int) -> dict[str, str]:
    with _game(n, f"sim{n}") as (_, servers):
        by_port = {s.port: s for s in servers}
        rss0 = {s.pid: C.rss_kb(s.pid) for s in servers}
        t = time.perf_counter()
        participants = setup(n)
        assert all(p.rounds_played() == 0 for p in (participants[0], participants[-1]))
        set_up = time.perf_counter() - t
        average, times = 50.0, []
        for round_no in range(1, 4):
            t = time.perf_counter()
            average = play_round(participants, round_no, average)
            times.append(time.perf_counter() - t)
        memory = sum(C.rss_kb(s.pid) - rss0[s.pid] for s in servers) / n
        placed = collections.Counter(p.server for p in participants)
        victim_address, hosted = placed.most_common(1)[0]
        victim = by_port[int(victim_address.rsplit(":", 1)[1])]
        t = time.perf_counter()
        pending = [p.guess(4, average) for p in participants]
        os.kill(victim.pid, signal.SIGKILL)
        answers = [a.result() for a in pending]
        recovered = time.perf_counter() - t
        played = {participants[i].rounds_played() for i in range(0, n, max(1, n // 200))}
        agentmesh.shutdown()
    return {"n": n, "setup_s": round(set_up, 3), "round_s": round(statistics.median(times), 3),
            "server_kb": round(memory, 2), "kill_round_s": round(recovered, 3), "moved": hosted,
            "answers": len(answers), "rounds_played": sorted(played)}


def _etcd_db_mb(etcd: EtcdProcess) -> float:
    """The size of etcd's database file (its backend, bbolt), MB."""
    path = os.path.join(etcd.data_dir or "", "member", "snap", "db")
    return round(os.path.getsize(path) / 2**20, 1) if os.path.exists(path) else 0.0


def one_round_at(n: int) -> dict:
    """The game at a size one machine should hold (issue 27: 1,000,000): place N participants through the
    registry over 4 servers, measure the servers with every participant idle, play one round."""
    with _game(n, f"big{n}") as (etcd, servers):
        rss0, client0 = {s.pid: C.rss_kb(s.pid) for s in servers}, C.rss_kb(os.getpid())
        t = time.perf_counter()
        participants = setup(n)
        assert all(p.rounds_played() == 0 for p in (participants[0], participants[-1]))
        set_up = time.perf_counter() - t
        idle = sum(C.rss_kb(s.pid) - rss0[s.pid] for s in servers) / n
        client_idle = (C.rss_kb(os.getpid()) - client0) / n
        t = time.perf_counter()
        average = play_round(participants, 1, 50.0)
        round_s = time.perf_counter() - t
        after = sum(C.rss_kb(s.pid) - rss0[s.pid] for s in servers) / n
        client_after = (C.rss_kb(os.getpid()) - client0) / n
        assert 0.0 <= average <= 100.0 and participants[n // 2].rounds_played() == 1
        db = _etcd_db_mb(etcd)
        agentmesh.shutdown()
    return {"n": n, "setup_s": round(set_up, 2), "round_s": round(round_s, 2), "server_idle_kb": round(idle, 2),
            "server_after_round_kb": round(after, 2), "client_kb": round(client_idle, 2),
            "client_after_round_kb": round(client_after, 2), "etcd_db_mb": db}


def rows_of(m: dict) -> dict[str, str]:
    """one_size()'s numbers as {what: value} for the table."""
    n = m["n"]
    return {"set-up (place and build every participant)": f"{m['setup_s']:.2f} s ({n / m['setup_s']:,.0f}/s)",
            "round (median of 3)": f"{m['round_s']:.2f} s ({n / m['round_s']:,.0f} answers/s)",
            "server memory per participant": f"{m['server_kb']:.2f} KB",
            "round with a server SIGKILLed after the calls were sent": f"{m['kill_round_s']:.2f} s ({m['moved']:,} "
                                                                        f"moved; {m['answers']:,} answers; rounds "
                                                                        f"played {m['rounds_played']})"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--one-round", type=int, default=0, metavar="N",
                        help="instead: N participants (issue 27: 1000000), one round, memory and etcd size")
    args = parser.parse_args()
    if args.one_round:
        print(one_round_at(args.one_round), flush=True)
        return
    sizes = [int(x) for x in args.sizes.split(",")]
    results = {n: rows_of(one_size(n)) for n in sizes}
    names = list(next(iter(results.values())))
    print(f"\n| guess 2/3 of the average, {SERVERS} servers, {os.cpu_count()} cores | "
          + " | ".join(f"N = {n:,}" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in names:
        print(f"| {name} | " + " | ".join(results[n][name] for n in sizes) + " |")


if __name__ == "__main__":
    main()
