"""Servers register in a real etcd; to_dist() with no host places through it."""
import collections
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time


import agentmesh
from agentmesh.discovery import keys
from conftest import MESH_TOKEN, PYTHON, etcd_get_prefix, server_info, wait_until
from sample_agents import Echo


def settle(*agents):
    """Wait until each agent exists (creation is pipelined; a full server sends it elsewhere)."""
    for agent in agents:
        agent.ping()


def servers_in(etcd, namespace):
    return etcd_get_prefix(etcd.url, keys.servers_prefix(namespace))


def test_registration_fields_and_load_updates(mesh, namespace, servers):
    etcd = mesh
    s = servers(capacity=5, registry=etcd.url, namespace=namespace, labels={"zone": "a"},
                custom_agent_classes=[Echo])
    key = keys.server_key(namespace, s.server_id)
    record = wait_until(lambda: servers_in(etcd, namespace).get(key))
    for field in ("server_id", "host", "port", "capacity", "agents", "inflight", "labels", "pid",
                  "hostname", "started_at", "version", "python", "classes"):
        assert field in record, field
    assert record["port"] == s.port and record["capacity"] == 5 and record["pid"] == s.pid
    assert record["labels"] == {"zone": "a"}
    assert "sample_agents:Echo" in record["classes"]
    assert record["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    agent = Echo("E").to_dist(host="127.0.0.1", port=s.port)
    wait_until(lambda: servers_in(etcd, namespace)[key]["agents"] == 1, timeout=1.5)
    pending = agent.slow(1.5, "x")
    wait_until(lambda: servers_in(etcd, namespace)[key]["inflight"] == 1, timeout=1.0)
    assert pending.result() == "x"
    wait_until(lambda: servers_in(etcd, namespace)[key]["inflight"] == 0, timeout=1.0)
    agents = etcd_get_prefix(etcd.url, keys.agents_prefix(namespace))
    assert agents[keys.agent_key(namespace, agent.agent_id)]["server_id"] == s.server_id


def test_placement_by_free_capacity(mesh, namespace, servers):
    small = servers(capacity=2, registry=mesh.url, namespace=namespace)
    big = servers(capacity=10, registry=mesh.url, namespace=namespace)
    wait_until(lambda: len(servers_in(mesh, namespace)) == 2)
    agents = [Echo(f"E{i}").to_dist() for i in range(12)]
    settle(*agents)
    counts = collections.Counter(a.server for a in agents)
    assert counts == {f"127.0.0.1:{big.port}": 10, f"127.0.0.1:{small.port}": 2}
    assert server_info(small).agents == 2 and server_info(big).agents == 10
    wait_until(lambda: sorted(r["agents"] for r in servers_in(mesh, namespace).values()) == [2, 10], timeout=1.5)
    out = subprocess.run([PYTHON, "-m", "agentmesh.cli", "servers", "--registry", mesh.url,
                          "--namespace", namespace], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, AGENTMESH_TOKEN=MESH_TOKEN))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:-1]}
    assert rows[small.server_id][2:4] == ["2", "2"] and rows[big.server_id][2:4] == ["10", "10"]
    assert rows[big.server_id][5] == "SERVING"
    as_json = subprocess.run([PYTHON, "-m", "agentmesh.cli", "agents", "--json", "--registry", mesh.url,
                              "--namespace", namespace], capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, AGENTMESH_TOKEN=MESH_TOKEN))
    listed = json.loads(as_json.stdout)
    assert sorted(r["agent_id"] for r in listed) == sorted(a.agent_id for a in agents)


def test_label_constraints(mesh, namespace, servers):
    plain = servers(capacity=10, registry=mesh.url, namespace=namespace)
    gpu = servers(capacity=3, registry=mesh.url, namespace=namespace, labels={"gpu": "1"})
    wait_until(lambda: len(servers_in(mesh, namespace)) == 2)
    placed = [Echo(f"G{i}", to_dist={"labels": {"gpu": "1"}}) for i in range(3)]
    settle(*placed)
    assert {a.server for a in placed} == {f"127.0.0.1:{gpu.port}"}
    anywhere = Echo("A").to_dist()
    assert anywhere.server == f"127.0.0.1:{plain.port}"


def test_full_mesh_falls_back_to_child_mode(mesh, namespace, servers, caplog):
    s = servers(capacity=1, registry=mesh.url, namespace=namespace)
    wait_until(lambda: len(servers_in(mesh, namespace)) == 1)
    first = Echo("1").to_dist()
    settle(first)
    assert first.server == f"127.0.0.1:{s.port}"
    with caplog.at_level(logging.INFO, logger="agentmesh"):
        second = Echo("2").to_dist()
    assert second.server != first.server and second.server.startswith("127.0.0.1:")
    assert second.ping(5) == 5
    assert any("child mode" in r.getMessage() and "room" in r.getMessage() for r in caplog.records)


def test_unreachable_registry_falls_back_quickly(caplog, runtime):
    from agentmesh.testing import free_port

    agentmesh.init(registry=f"etcd://127.0.0.1:{free_port()}", namespace="nowhere", token=MESH_TOKEN)
    try:
        start = time.monotonic()
        with caplog.at_level(logging.INFO, logger="agentmesh"):
            agent = Echo("E").to_dist()
        took = time.monotonic() - start
        assert agent.ping(1) == 1
        assert took < 4.0, f"fallback took {took:.2f} s"
        assert any("unreachable" in r.getMessage() for r in caplog.records)
        print(f"unreachable registry -> child mode in {took:.2f} s", file=sys.stderr)
    finally:
        runtime.configure(registry=None)


def test_sigkilled_server_key_disappears_within_ttl(etcd, namespace, servers):
    s = servers(capacity=2, registry=etcd.url, namespace=namespace, registry_ttl=2)
    key = keys.server_key(namespace, s.server_id)
    wait_until(lambda: key in servers_in(etcd, namespace))
    os.kill(s.pid, signal.SIGKILL)
    start = time.monotonic()
    wait_until(lambda: key not in servers_in(etcd, namespace), timeout=6, interval=0.05)
    took = time.monotonic() - start
    assert took < 2 + 2.5, took
    print(f"SIGKILL -> key gone in {took:.2f} s (ttl 2)", file=sys.stderr)


def test_graceful_stop_withdraws_at_once(etcd, namespace, servers):
    s = servers(capacity=2, registry=etcd.url, namespace=namespace)
    key = keys.server_key(namespace, s.server_id)
    wait_until(lambda: key in servers_in(etcd, namespace))
    s.shutdown()
    assert key not in servers_in(etcd, namespace)


def test_servers_register_again_after_etcd_loses_everything(namespace, servers, tmp_path, runtime):
    from agentmesh.testing import EtcdProcess

    etcd = EtcdProcess(name="agentmesh-test-restart")
    etcd.start(data_dir=str(tmp_path / "one"))
    try:
        s = servers(capacity=4, registry=etcd.url, namespace=namespace, registry_ttl=2)
        key = keys.server_key(namespace, s.server_id)
        wait_until(lambda: key in servers_in(etcd, namespace))
        port = etcd.client_port
        etcd.stop()
        etcd.start(data_dir=str(tmp_path / "two"), client_port=port)  # same address, no data
        start = time.monotonic()
        wait_until(lambda: key in servers_in(etcd, namespace), timeout=15, interval=0.05)
        print(f"etcd wiped and restarted -> server registered again in {time.monotonic() - start:.2f} s",
              file=sys.stderr)
        assert len(servers_in(etcd, namespace)) == 1
        agentmesh.init(registry=etcd.url, namespace=namespace, token=MESH_TOKEN)
        agent = Echo("after").to_dist()
        assert agent.server == f"127.0.0.1:{s.port}"
    finally:
        etcd.stop()


def test_etcd_restart_is_survived_by_servers_and_clients(namespace, servers, tmp_path, runtime):
    from agentmesh.testing import EtcdProcess

    etcd = EtcdProcess(name="agentmesh-test-restart2")
    etcd.start(data_dir=str(tmp_path / "data"))
    try:
        s = servers(capacity=4, registry=etcd.url, namespace=namespace, registry_ttl=2)
        key = keys.server_key(namespace, s.server_id)
        wait_until(lambda: key in servers_in(etcd, namespace))
        agentmesh.init(registry=etcd.url, namespace=namespace, token=MESH_TOKEN)
        first = Echo("before").to_dist()
        assert first.server == f"127.0.0.1:{s.port}"
        etcd.restart()
        wait_until(lambda: key in servers_in(etcd, namespace), timeout=15)
        second = Echo("after").to_dist()   # the client's view came back too
        assert second.server == f"127.0.0.1:{s.port}"
        wait_until(lambda: servers_in(etcd, namespace)[key]["agents"] == 2, timeout=5)
        assert first.ping(3) == 3
    finally:
        etcd.stop()


def test_concurrent_placement_from_several_processes_respects_capacity(etcd, namespace, servers, procs):
    a = servers(capacity=5, registry=etcd.url, namespace=namespace)
    b = servers(capacity=7, registry=etcd.url, namespace=namespace)
    wait_until(lambda: len(servers_in(etcd, namespace)) == 2)
    script = textwrap.dedent(f"""
        import agentmesh, sys
        from sample_agents import Echo
        agentmesh.init(registry={etcd.url!r}, namespace={namespace!r}, token={MESH_TOKEN!r})
        agents = [Echo(f"E{{i}}").to_dist() for i in range(8)]
        for x in agents:
            x.ping()
        print(" ".join(x.server for x in agents), flush=True)
        sys.stdin.read()  # hold the agents until the test has counted (they are deleted at exit)
    """)
    workers = [procs([PYTHON, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(3)]
    placed = collections.Counter()
    for w in workers:
        placed.update(w.stdout.readline().split())
    assert sum(placed.values()) == 24
    assert placed[f"127.0.0.1:{a.port}"] == 5 and placed[f"127.0.0.1:{b.port}"] == 7
    assert server_info(a).agents == 5 and server_info(b).agents == 7
    for w in workers:
        w.stdin.close()
        assert w.wait(30) == 0
    # the workers deleted their agents on exit
    wait_until(lambda: server_info(a).agents == 0 and server_info(b).agents == 0)


class _Load:
    """The live load a Registration reads: the server's agents, and the ones it was made to drop."""

    inflight, epoch, draining = 0, 1, False

    def __init__(self):
        self.agents, self.dropped = {}, []

    def fence(self, why, agent_ids):
        self.dropped += agent_ids
        return len(agent_ids)


def test_a_stop_check_drops_only_agents_whose_record_was_written_after_our_copy(etcd, namespace):
    """A copy created here during a stop's check, whose record still names its old (dead, lease not yet
    expired) home, is not moved away: only a record newer than our copy says its owner moved it."""
    import asyncio

    from agentmesh import _trust
    from agentmesh._config import ServerConfig
    from agentmesh.discovery.registration import Registration
    from agentmesh.etcd import EtcdClient

    key = _trust.namespace_key(MESH_TOKEN, namespace)

    async def scenario():
        other = EtcdClient.from_url(etcd.url)
        lease = await other.lease(30)

        async def record_elsewhere(agent_id):
            path = keys.agent_key(namespace, agent_id)
            rec = {"agent_id": agent_id, "name": "", "class": "m:C", "server_id": "oldhome", "address": "x:1"}
            await other.put_many([(path, _trust.sign_record(key, path, rec, lease.id), lease.id)])

        await record_elsewhere("fresh")                  # its old home's record, from before our copy
        config = ServerConfig(registry=etcd.url, namespace=namespace, token=MESH_TOKEN, server_id="here")
        load = _Load()
        registration = Registration(config, load, port=1, metrics_port=None, class_names=[], started_at=0.0,
                                    key=key, min_interval=30.0)
        await registration.start(wait=5.0)
        try:
            registration.load_changed()               # one write, then the writer rests min_interval s
            deadline = time.monotonic() + 5
            while registration._dirty.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            for agent_id in ("fresh", "moved"):
                load.agents[agent_id] = object()
                registration.agent_added(agent_id, "", "m:C")   # created here; records not written yet
            await record_elsewhere("moved")              # its owner moved it after our copy came
            assert await registration.drop_moved("a test's stop") == 1
            assert load.dropped == ["moved"]
        finally:
            await registration.stop()
            await lease.revoke()
            await other.close()

    asyncio.run(scenario())
