"""What a call made by someone other than an agent's creator costs, and a msghub round (issue 24).

Since a third party's call pushes the agent's checkpoint to its creator and
its reply waits for that push to be written, these are the paths it touches:

- third-party calls/s: the driver asks agent A (server 1) to call agent B
  (server 2, a counter), one after another; B's creator (the driver) gets the pushes;
- owner calls/s: the driver calls B directly, for reference;
- msghub rounds/s: five members over two servers, one sequential pipeline
  per round, every reply broadcast to the other four (those broadcasts are
  third-party calls).

Run it twice, before and after a change, on a quiet machine:

    python benchmarks/bench_third_party.py [--repeat 3]

It prints one JSON line of medians. Every server it starts is stopped by PID.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import agentmesh  # noqa: E402
from agentmesh import Msg, RpcAgentServerLauncher  # noqa: E402
from agentmesh.msghub import msghub  # noqa: E402
from sample_agents import Cruncher, Forwarding, TeamMember  # noqa: E402


def rate(fn, n: int) -> float:
    """Calls of fn per second over n calls (after a short warm-up)."""
    for _ in range(min(50, n)):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def once(calls: int, rounds: int) -> dict:
    servers = []
    try:
        for _ in range(2):
            s = RpcAgentServerLauncher(host="127.0.0.1", capacity=64)
            s.launch(in_subprocess=True)
            servers.append(s)
        box = Cruncher("box").to_dist(host="127.0.0.1", port=servers[1].port)   # a small state: a count
        forwarder = Forwarding("fwd").to_dist(host="127.0.0.1", port=servers[0].port)
        third = rate(lambda: forwarder.bump(box), calls)
        owner = rate(box.inc, calls)
        team = [TeamMember(f"m{i}").to_dist(host="127.0.0.1", port=servers[i % 2].port) for i in range(5)]

        def one_round() -> None:
            x = Msg("host", "go")
            for member in team:
                x = member(x)
            x.content

        with msghub(team):
            hub = rate(one_round, rounds)
        return {"third_party_calls_per_s": third, "owner_calls_per_s": owner, "msghub_rounds_per_s": hub}
    finally:
        for s in servers:
            try:
                os.kill(s.pid, signal.SIGKILL)
            except OSError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    agentmesh.init()
    runs = [once(args.calls, args.rounds) for _ in range(args.repeat)]
    print(json.dumps({key: round(statistics.median(r[key] for r in runs), 1) for key in runs[0]}))
    agentmesh.shutdown()


if __name__ == "__main__":
    main()
