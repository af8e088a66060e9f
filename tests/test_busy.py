"""Busy is not dead: long calls, a held GIL and a busy CPU move nothing; a real stop moves only what moved."""
import logging
import os
import pickle
import re
import signal
import time

import pytest

from agentmesh import errors
from agentmesh.discovery import keys
from agentmesh.rpc import RpcClient
from conftest import etcd_get_prefix, server_info, wait_until
from sample_agents import Cruncher

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def moves(caplog, launcher, since: int = 0) -> int:
    """How many agents this process's proxies moved off launcher's server, from the one line they log per
    lost server (after the first `since` records)."""
    lost = f"agent server 127.0.0.1:{launcher.port} lost "
    found = (re.search(r"\): (\d+) agent\(s\) moved to", r.getMessage()) for r in caplog.records[since:]
             if r.getMessage().startswith(lost))
    return sum(int(m.group(1)) for m in found if m)


def two_servers(mesh, namespace, servers, **options):
    """Two servers in the registry hosting Cruncher by name: the one the test uses, and a spare a false move
    would go to."""
    launchers = [servers(capacity=8, registry=mesh.url, namespace=namespace, custom_agent_classes=[Cruncher],
                         **options) for _ in range(2)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 2)
    return launchers


def pinned(launcher) -> dict:
    return {"host": "127.0.0.1", "port": launcher.port}


def test_an_agent_holding_the_gil_for_5_s_moves_nothing_even_past_its_lease(mesh, namespace, servers, caplog):
    caplog.set_level(logging.INFO, logger="agentmesh")
    busy_server, _spare = two_servers(mesh, namespace, servers, registry_ttl=2)   # the lease ends mid-hold
    address = f"127.0.0.1:{busy_server.port}"
    busy, other = (Cruncher(name, to_dist=pinned(busy_server)) for name in ("busy", "other"))
    assert busy.inc() == 1 and other.inc() == 1
    before = server_info(busy_server)
    cpu = cpu_seconds(busy_server.pid)
    held = busy.hold_gil(5.0)
    wait_until(lambda: cpu_seconds(busy_server.pid) - cpu > 1.0, timeout=15)   # the hold is a second in
    assert other.inc() == 2            # called while the GIL is held: answered late, not moved
    assert held.result(timeout=60) >= 4.0           # one C call: twice the lease ttl, over twice fence_after
    assert moves(caplog, busy_server) == 0
    assert busy.server == other.server == address
    after = server_info(busy_server)
    assert (after.epoch, after.agents) == (before.epoch, 2)
    assert busy.inc() == 2 and other.inc() == 3     # the same copies, with their state
    # the records name this server again once it has re-registered under a new lease
    agent_keys = [keys.agent_key(namespace, a.agent_id) for a in (busy, other)]
    wait_until(lambda: all(etcd_get_prefix(mesh.url, k).get(k, {}).get("server_id") == before.server_id
                           for k in agent_keys), timeout=15)


def test_a_10_s_python_loop_in_one_agent_moves_nothing_and_its_neighbours_keep_answering(servers, caplog):
    caplog.set_level(logging.INFO, logger="agentmesh")
    server = servers(capacity=8)
    busy, other = (Cruncher(name, to_dist=pinned(server)) for name in ("busy", "other"))
    assert other.inc() == 1
    spinning = busy.spin(10.0)
    answered = 1
    while not spinning.done():
        answered = other.inc()
    assert spinning.result() > 0
    assert answered > 10                    # the neighbour was served all along, not only after the loop
    assert moves(caplog, server) == 0
    assert other.server == busy.server == f"127.0.0.1:{server.port}"
    assert other.inc() == answered + 1


def test_sigstop_moves_the_calls_in_flight_the_resumed_server_drops_only_the_moved_agent(
        mesh, namespace, servers, caplog):
    caplog.set_level(logging.INFO, logger="agentmesh")
    victim, spare = two_servers(mesh, namespace, servers)
    moved = Cruncher("moved", to_dist=pinned(victim))
    for n in range(1, 4):
        assert moved.inc() == n
    copy = pickle.loads(pickle.dumps(moved))     # a proxy copy, not used until the server is back
    client = RpcClient("127.0.0.1", victim.port)  # an agent no proxy watches: nobody moves it
    client.create_agent({"class_name": "Cruncher", "args": ["stays"]}, agent_id="stays")
    inc_stays = pickle.dumps({"args": (), "kwargs": {}})
    assert pickle.loads(client.call_agent_func("inc", "stays", inc_stays)) == 1
    old_epoch = server_info(victim).epoch
    in_flight = moved.nap(0.5)
    wait_until(lambda: server_info(victim).inflight >= 1)
    os.kill(victim.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        assert in_flight.result(timeout=15) == 4        # replayed elsewhere from the checkpoint after call 3
        assert moved.server == f"127.0.0.1:{spare.port}"
        wait_until(lambda: time.monotonic() - stopped >= 3.0, timeout=5)
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    wait_until(lambda: moves(caplog, victim) == 1)
    wait_until(lambda: [a["agent_id"] for a in client.get_agent_list()] == ["stays"], timeout=10)
    assert server_info(victim).epoch != old_epoch
    assert pickle.loads(client.call_agent_func("inc", "stays", inc_stays)) == 2     # kept its state
    mark, start = len(caplog.records), time.monotonic()
    assert copy.inc() == 5           # the copy found the agent's new home
    took = time.monotonic() - start
    assert copy.server == f"127.0.0.1:{spare.port}"
    wait_until(lambda: moves(caplog, victim, mark) == 1)
    assert took <= 1.0, f"the copy took {took:.2f} s to converge"


def test_a_proxy_left_on_a_fenced_copy_fails_clearly_at_once_in_a_few_lines(servers, caplog):
    caplog.set_level(logging.INFO, logger="agentmesh")
    victim = servers(capacity=8)        # no registry: the owner moves the agent to a child server and says so
    owner = Cruncher("owner", to_dist=pinned(victim))
    assert owner.inc() == 1
    copy = pickle.loads(pickle.dumps(owner))
    in_flight = owner.nap(0.5)
    wait_until(lambda: server_info(victim).inflight >= 1)
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        assert in_flight.result(timeout=15) == 2
        assert owner.server != f"127.0.0.1:{victim.port}"
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    wait_until(lambda: server_info(victim).agents == 0, timeout=15)     # the owner told it the agent moved
    mark, start = len(caplog.records), time.monotonic()
    with pytest.raises(errors.AgentMeshError) as raised:
        copy.inc()
    took = time.monotonic() - start
    message = str(raised.value)
    assert f"127.0.0.1:{victim.port}" in message and owner.agent_id in message and "dropped" in message
    assert len(caplog.records) - mark <= 3
    assert took < 5.0
    assert owner.inc() == 3                    # the owner's copy is untouched
