"""Failover: agents survive the death, hang or drain of their server, with their state."""
import collections
import logging
import os
import signal
import sys
import threading
import time


from agentmesh import Msg
from agentmesh.discovery import keys
from conftest import etcd_get_prefix, server_info, wait_until
from sample_agents import Echo


def by_address(launchers):
    return {f"127.0.0.1:{s.port}": s for s in launchers}


def warm(agent, n=3):
    for i in range(n):
        agent.reply(Msg("u", i)).result()
    assert agent.get_count() == n


def test_sigkill_during_calls_keeps_state_and_every_call_returns(mesh, namespace, servers):
    launchers = [servers(capacity=8, registry=mesh.url, namespace=namespace) for _ in range(2)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 2)
    agent = Echo("A").to_dist()
    warm(agent)
    victim = by_address(launchers)[agent.server]
    before = agent.server
    pending = [agent.slow(0.5, i) for i in range(3)]
    wait_until(lambda: server_info(victim).inflight >= 1)
    killed = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    assert [p.result(timeout=15) for p in pending] == [0, 1, 2]
    took = time.monotonic() - killed
    assert agent.server != before
    assert agent.get_count() == 3          # the state from before the kill
    assert agent.reply(Msg("u", "after")).content["count"] == 4
    print(f"SIGKILL: 3 x 0.5 s calls in flight done {took:.2f} s after the kill", file=sys.stderr)


def test_sigkill_without_registry_moves_to_a_child_server(servers):
    s = servers(capacity=4)
    agent = Echo("A").to_dist(host="127.0.0.1", port=s.port)
    warm(agent, 2)
    pending = agent.slow(0.3, "done")
    os.kill(s.pid, signal.SIGKILL)
    assert pending.result(timeout=15) == "done"
    assert agent.server != f"127.0.0.1:{s.port}" and agent.get_count() == 2


def test_sigstop_is_detected_routed_around_and_the_resumed_server_is_fenced(mesh, namespace, servers):
    launchers = [servers(capacity=8, registry=mesh.url, namespace=namespace) for _ in range(2)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 2)
    agent = Echo("A").to_dist()
    warm(agent)
    victim = by_address(launchers)[agent.server]
    old_epoch = server_info(victim).epoch
    pending = agent.slow(0.2, "x")
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        assert pending.result(timeout=15) == "x"
        took = time.monotonic() - stopped
        assert agent.server != f"127.0.0.1:{victim.port}"
        assert agent.get_count() == 3
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    print(f"SIGSTOP: routed around in {took:.2f} s", file=sys.stderr)
    # the resumed server fences itself: new epoch, the moved agent is gone from it
    wait_until(lambda: server_info(victim).epoch != old_epoch, timeout=10)
    assert server_info(victim).agents == 0
    assert agent.get_count() == 3


def test_drain_during_calls_moves_agents_live(mesh, namespace, servers):
    launchers = [servers(capacity=8, registry=mesh.url, namespace=namespace) for _ in range(2)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 2)
    agents = [Echo(f"A{i}", to_dist={"checkpoint": i == 0}) for i in range(2)]   # one opts out of checkpoints
    for agent in agents:
        warm(agent, 2)
    victim = by_address(launchers).get(agents[0].server)
    if victim is None or agents[1].server != agents[0].server:
        agents[1] = Echo("A1", to_dist={"host": "127.0.0.1", "port": victim.port, "checkpoint": False})
        warm(agents[1], 2)
    pending = [a.slow(0.5, a.name) for a in agents]
    wait_until(lambda: server_info(victim).inflight >= 1)
    victim.shutdown()   # SIGTERM: NOT_SERVING, withdraw, agents move, then exit 0
    assert [p.result(timeout=15) for p in pending] == ["A0", "A1"]
    assert victim._process.proc.returncode == 0
    for agent in agents:
        assert agent.server != f"127.0.0.1:{victim.port}"
        assert agent.get_count() == 2            # state moved, with and without checkpoints


def test_chaos_kills_and_joins_lose_no_call_and_no_turn(mesh, namespace, servers, caplog):
    caplog.set_level("INFO", logger="agentmesh.rpc")
    launchers = [servers(capacity=16, registry=mesh.url, namespace=namespace) for _ in range(3)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 3)
    agents = [Echo(f"C{i}").to_dist() for i in range(8)]
    per_thread = 80
    failures, turns = [], collections.defaultdict(list)
    done_at_kill = []

    def hammer(agent):
        for i in range(per_thread):
            try:
                turns[agent.name].append(agent.reply(Msg("u", i)).result(timeout=30).content["count"])
            except Exception as exc:  # noqa: BLE001 - counted, and the test fails on any
                failures.append(repr(exc))
            time.sleep(0.015)   # pace the load so the kills land while calls are running

    threads = [threading.Thread(target=hammer, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    alive = list(launchers)
    for round_ in range(2):
        wait_until(lambda: sum(len(v) for v in turns.values()) >= (round_ + 1) * 150, timeout=60)
        victim = next(s for s in alive if server_info(s).agents > 0)
        alive.remove(victim)
        done_at_kill.append(sum(len(v) for v in turns.values()))
        os.kill(victim.pid, signal.SIGKILL)
        if round_ == 0:
            alive.append(servers(capacity=16, registry=mesh.url, namespace=namespace))
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures[:5]
    assert done_at_kill[-1] < 8 * per_thread, "the second kill came after the load had finished"
    total = sum(len(v) for v in turns.values())
    assert total == 8 * per_thread
    for name, counts in turns.items():   # every turn counted exactly once, in order: no lost or doubled turn
        assert counts == list(range(1, per_thread + 1)), (name, counts[:10])
    summaries = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and " lost (" in r.getMessage()]
    assert 1 <= len(summaries) <= 4, summaries          # one summary per lost server, not one line per agent
    moves = sum(int(m.split(" agent(s) moved")[0].rsplit(" ", 1)[-1]) for m in summaries)
    replayed = sum(int(m.split(" call(s) replayed")[0].rsplit(" ", 1)[-1]) for m in summaries)
    assert moves, "no agent moved: the kills did not hit any agent"
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and " moved " in r.getMessage()
                and " lost (" not in r.getMessage()]   # a crash's agents move together: no line per agent
    print(f"chaos: {total} calls, 0 failed, 2 servers killed, 1 joined, {moves} moves, "
          f"{replayed} calls replayed", file=sys.stderr)


def test_third_party_placeholder_and_proxy_copies_follow_the_agent(mesh, namespace, servers):
    from sample_agents import FanOut, Relay, Sleeper

    s1 = servers(capacity=8, registry=mesh.url, namespace=namespace)
    s2 = servers(capacity=8, registry=mesh.url, namespace=namespace)
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 2)
    slow = Sleeper("slow", 1.0, to_dist={"host": "127.0.0.1", "port": s1.port})
    relay = Relay("relay", to_dist={"host": "127.0.0.1", "port": s2.port})
    workers = [Sleeper(f"w{i}", 0.2, to_dist={"host": "127.0.0.1", "port": s1.port}) for i in range(2)]
    boss = FanOut("boss", workers, to_dist={"host": "127.0.0.1", "port": s2.port})
    pending = slow(Msg("u", 1))
    relayed = relay(pending)            # s2 fetches `pending` from s1, which is about to die
    wait_until(lambda: server_info(s1).inflight >= 1)
    os.kill(s1.pid, signal.SIGKILL)
    assert relayed.result(timeout=30).content == 3
    assert slow.server != f"127.0.0.1:{s1.port}"
    # the proxies held by `boss` on s2 are copies: they find the workers' new home in the registry
    assert boss(Msg("u", 10)).result(timeout=30).content == [11, 11]
