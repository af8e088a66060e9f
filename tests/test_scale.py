"""Correctness at moderate scale: 2,000 agents over 3 servers, one SIGKILLed mid-traffic; the simulation example.

Sizes of 10,000 and up, and every speed figure, live in benchmarks/ (bench_scale.py, bench_simulation.py).
"""
from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess

from agentmesh import Msg
from agentmesh.discovery import keys
from conftest import PYTHON, etcd_get_prefix, wait_until
from sample_agents import Echo


def test_2000_agents_over_3_servers_one_killed_mid_traffic(mesh, namespace, servers, caplog):
    caplog.set_level(logging.INFO, logger="agentmesh")
    launchers = [servers(capacity=2000, registry=mesh.url, namespace=namespace) for _ in range(3)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 3)
    agents = [Echo(f"s{i}").to_dist() for i in range(2000)]
    first = [a(Msg("u", "one")) for a in agents]
    assert all(r.content["count"] == 1 for r in first)
    placed = collections.Counter(a.server for a in agents)
    assert len(placed) == 3, placed                               # spread over every server
    victim_address, hosted = placed.most_common(1)[0]
    victim = next(s for s in launchers if victim_address.endswith(f":{s.port}"))
    caplog.clear()
    second = [a(Msg("u", "two")) for a in agents]                 # in flight when the server dies
    os.kill(victim.pid, signal.SIGKILL)
    third = [a(Msg("u", "three")) for a in agents]                # sent while its agents move
    assert [r.content["count"] for r in second] == [2] * 2000     # every call answered once, in order, on
    assert [r.content["count"] for r in third] == [3] * 2000      # the state from before the kill
    assert [a.get_count() for a in agents] == [3] * 2000
    assert not any(a.server == victim_address for a in agents)
    summaries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and " lost (" in r.getMessage()]
    assert len(summaries) == 1 and f"{hosted} agent(s) moved" in summaries[0], summaries


def test_the_simulation_example_plays_its_rounds(procs):
    proc = procs([PYTHON, "examples/simulation/guess.py", "--agents", "300", "--rounds", "3"],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("300 participants placed in")
    averages = [float(line.split("average ")[1].split()[0]) for line in lines[1:]]
    assert len(averages) == 3
    previous = 50.0
    for average in averages:          # each round moves towards two thirds of the last (biases average out)
        assert abs(average - 2 / 3 * previous) < 1.5, (previous, average)
        previous = average


def test_agents_released_together_do_not_wait_behind_slow_ones():
    """After a failover, thousands of agents are released onto a few threads at once; agents whose calls
    run long (an LLM call) must not hold up the others released with them, nor each other."""
    import threading
    import time

    from agentmesh.server._workers import Workers

    workers = Workers(64, "test")
    release = threading.Event()
    slow_started = collections.Counter()
    quick_done: list[int] = []
    all_quick = threading.Event()

    def job(arg):
        if arg == "slow":
            slow_started["n"] += 1
            release.wait(30)
        else:
            quick_done.append(arg)
            if len(quick_done) == 200:
                all_quick.set()

    try:
        workers.run_many(job, ["slow"] * 8 + list(range(200)))
        assert all_quick.wait(10), f"{len(quick_done)} of 200 quick jobs ran while 8 slow ones blocked"
        assert wait_until(lambda: slow_started["n"] == 8, timeout=10)
        assert sorted(quick_done) == list(range(200))
    finally:
        release.set()
        workers.shutdown()
