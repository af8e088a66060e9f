"""Trust in both directions, tried as an attacker would: forged registry records and rogue servers.

A rogue server (tests/rogue_server.py, a real process) answers like one of
ours but holds no token; every pickle it sends creates a marker file when
unpickled, and it logs every request it gets. Each test checks that no client
or server ran its code, and that it never saw the token or a ticket (anything
derived from the token that would let it authenticate elsewhere).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import signal
import subprocess
import textwrap
import time

import pytest

import agentmesh
from agentmesh import AgentCallError, errors
from agentmesh._client.slot import ResultRef
from agentmesh._placeholder import AsyncResult
from agentmesh.discovery import keys
from agentmesh.testing import wire as _wire
from agentmesh.etcd import EtcdClient
from conftest import MESH_TOKEN, PYTHON, etcd_get_prefix, pid_alive, server_info, wait_until
from sample_agents import Echo

ROGUE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rogue_server.py")


class RogueProcess:
    """A running rogue server: its port, what it was asked, and whether its pickles ran anywhere."""

    def __init__(self, proc: subprocess.Popen, port: int, log: str, marker: str) -> None:
        self.proc, self.port, self.log, self.marker = proc, port, log, marker

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests(self) -> list[dict]:
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [json.loads(line) for line in f]

    def assert_learned_nothing(self) -> None:
        """Only handshakes reached it, none carried a ticket or the token, and none of its pickles ran."""
        seen = self.requests()
        assert {r["method"] for r in seen} <= {"Handshake"}, seen
        text = json.dumps(seen)
        assert _wire.MD_AUTH not in text and MESH_TOKEN not in text, seen
        assert not os.path.exists(self.marker), "a pickle from the rogue server was unpickled"


@pytest.fixture
def rogue(procs, tmp_path):
    """rogue(port=0, server_id="rogue") -> RogueProcess, stopped by PID at the end (by procs)."""
    count = iter(range(100))

    def start(port: int = 0, server_id: str = "rogue") -> RogueProcess:
        n = next(count)
        log, marker = str(tmp_path / f"rogue-{n}.log"), str(tmp_path / f"rogue-{n}-ran")
        proc = procs([PYTHON, ROGUE, str(port), server_id, log, marker], stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert line.startswith("READY "), f"rogue server did not start: {line!r}"
        return RogueProcess(proc, int(line.split()[1]), log, marker)

    return start


def forged_record(address: str, server_id: str, **extra) -> bytes:
    host, port = address.rsplit(":", 1)
    record = {"server_id": server_id, "host": host, "port": int(port), "address": address, "capacity": 10**9,
              "agents": 0, "inflight": 0, "labels": {}, "pid": 1, "hostname": "rogue", "started_at": time.time(),
              "version": "9", "python": _wire.PYTHON_VERSION, "classes": [], "ship_classes": True, "epoch": 1,
              "status": "SERVING", **extra}
    return json.dumps(record).encode()


def test_forged_server_records_place_nothing(mesh, namespace, servers, rogue, caplog):
    real = servers(capacity=4, registry=mesh.url, namespace=namespace)
    wait_until(lambda: keys.server_key(namespace, real.server_id) in etcd_keys(mesh, keys.servers_prefix(namespace)))
    bad = rogue()
    prefix = keys.servers_prefix(namespace)
    etcd_put(mesh.url, prefix + "rogue", forged_record(bad.address, "rogue"))                 # no lease, no MAC
    etcd_put(mesh.url, prefix + "rogue2", forged_record(bad.address, "rogue2", mac="00" * 32), lease_ttl=60)
    real_record = json.loads(etcd_get(mesh.url, keys.server_key(namespace, real.server_id)))
    moved = dict(real_record, server_id="rogue3", address=bad.address, port=bad.port, capacity=10**9)
    etcd_put(mesh.url, prefix + "rogue3", json.dumps(moved).encode(), lease_ttl=60)   # a real MAC, edited

    agents = [Echo(f"E{i}").to_dist() for i in range(4)]
    assert [a.ping(i) for i, a in enumerate(agents)] == [0, 1, 2, 3]
    assert {a.server for a in agents} == {real.address}
    bad.assert_learned_nothing()
    assert bad.requests() == []                      # it was never even dialled
    ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    for key in ("rogue", "rogue2", "rogue3"):
        assert sum(m.count(prefix + key + ":") for m in ignored) == 1, ignored   # logged once each


def test_a_rogue_on_the_freed_port_gets_nothing_and_the_agent_moves(mesh, namespace, servers, rogue, procs):
    a = servers(capacity=8, registry=mesh.url, namespace=namespace, registry_ttl=2)
    b = servers(capacity=4, registry=mesh.url, namespace=namespace, registry_ttl=2)
    wait_until(lambda: len(etcd_keys(mesh, keys.servers_prefix(namespace))) == 2)
    client = procs([PYTHON, "-c", textwrap.dedent(f"""
        import sys, agentmesh
        from sample_agents import Echo
        agentmesh.init(registry={mesh.url!r}, namespace={namespace!r}, token={MESH_TOKEN!r})
        agent = Echo("victim").to_dist()
        for i in range(3):
            agent.reply(i)
        print(agent.server, flush=True)
        sys.stdin.readline()
        print(agent.get_count(), agent.reply("after").content["count"], agent.server, flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == a.address
    os.kill(client.pid, signal.SIGSTOP)                 # the client does not see the swap happen
    try:
        os.kill(a.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(a.pid))
        impostor = rogue(port=a.port, server_id=a.server_id)   # claims the dead server's id
    finally:
        os.kill(client.pid, signal.SIGCONT)
    client.stdin.write("go\n")
    client.stdin.flush()
    count, after, where = client.stdout.readline().split()
    assert (count, after, where) == ("3", "4", b.address)
    assert client.wait(30) == 0
    impostor.assert_learned_nothing()     # so its checkpoint (every reply carries one) was never relayed:
    assert impostor.requests(), "the client never re-dialled the old address: the test proves nothing"
    # b got the agent from the client's own checkpoint (count 3), not from anything the rogue sent.


def test_forged_agent_records_and_placeholders_redirect_nothing(mesh, namespace, servers, rogue, runtime):
    a = servers(capacity=8, registry=mesh.url, namespace=namespace, registry_ttl=2)
    b = servers(capacity=4, registry=mesh.url, namespace=namespace, registry_ttl=2)
    wait_until(lambda: len(etcd_keys(mesh, keys.servers_prefix(namespace))) == 2)
    bad = rogue(server_id="rogue")
    agent = Echo("owned").to_dist()
    assert agent.reply(1).content["count"] == 1 and agent.server == a.address
    copy = pickle.loads(pickle.dumps(agent))          # a third party's proxy follows the agent's record
    path = keys.agent_key(namespace, agent.agent_id)
    wait_until(lambda: path in etcd_keys(mesh, keys.agents_prefix(namespace)))
    forged = json.dumps({"agent_id": agent.agent_id, "name": "owned", "class": "sample_agents:Echo",
                         "server_id": "rogue", "address": bad.address}).encode()
    etcd_put(mesh.url, path, forged, lease_ttl=60)
    assert runtime.run(runtime.locate(agent.agent_id, timeout=0.3)) is None    # the forged record names nobody

    os.kill(a.pid, signal.SIGKILL)
    assert agent.reply(2).content["count"] == 2 and agent.server == b.address   # the owner re-creates it on b
    assert copy.reply(3).content["count"] == 3 and copy.server == b.address     # the copy found b's signed record

    # A placeholder that names the rogue, handed to a real server: it fetches nothing it would unpickle.
    lure = AsyncResult(ref=ResultRef("rogue", bad.address, "someone", "call-1"))
    with pytest.raises(AgentCallError, match="did not prove"):
        agent.reply(lure).content
    assert agent.get_count() == 4    # reply() counted, then failed on touching the lure; the agent lives on
    bad.assert_learned_nothing()


def test_a_rogue_named_explicitly_gets_no_secret(runtime, rogue, servers):
    runtime.configure(token=MESH_TOKEN)
    bad = rogue()
    with pytest.raises(errors.AuthenticationError, match="did not prove it holds the token"):
        Echo("x").to_dist(host="127.0.0.1", port=bad.port)
    bad.assert_learned_nothing()
    real = servers(capacity=2, token=MESH_TOKEN)
    assert Echo("y").to_dist(host="127.0.0.1", port=real.port).ping(5) == 5
    assert server_info(real).agents == 1


def test_a_registry_without_the_token_is_refused(etcd, runtime):
    runtime.configure(token=None)
    with pytest.raises(ValueError, match="needs the namespace token"):
        agentmesh.init(registry=etcd.url)
    assert runtime.settings.registry is None                  # nothing changed
    assert Echo("local").to_dist().ping(1) == 1               # child mode still works


# -- etcd, as the attacker writes it ------------------------------------------------------
def _etcd(url: str, action):
    async def run():
        client = EtcdClient.from_url(url)
        try:
            return await action(client)
        finally:
            await client.close()

    return asyncio.run(run())


def etcd_put(url: str, key: str, value: bytes, lease_ttl: int = 0) -> None:
    """Write key as anyone with write access to etcd can; with lease_ttl, under a lease of the attacker's."""
    async def put(client):
        lease = await client.lease_grant(lease_ttl) if lease_ttl else 0
        await client.put(key, value, lease=lease)

    _etcd(url, put)


def etcd_get(url: str, key: str) -> bytes:
    async def get(client):
        return (await client.get(key)).value

    return _etcd(url, get)


def etcd_keys(etcd, prefix: str) -> set[str]:
    return set(etcd_get_prefix(etcd.url, prefix))


def test_refusals_are_logged_with_the_peer_once_per_reason(caplog):
    import grpc

    from agentmesh import RpcAgentServerLauncher
    from agentmesh.v1 import agent_server_pb2 as pb
    from agentmesh.v1 import agent_server_pb2_grpc as pb_grpc

    server = RpcAgentServerLauncher(host="127.0.0.1", capacity=2, token=MESH_TOKEN)
    server.launch(in_subprocess=False)       # in this process, so its log lines are captured here
    try:
        with caplog.at_level(logging.WARNING, logger="agentmesh.server"), \
                grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AgentServerStub(channel)
            for _ in range(50):
                with pytest.raises(grpc.RpcError) as info:
                    stub.GetInfo(pb.InfoRequest(), metadata=_wire.call_metadata(), timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.GetInfo(pb.InfoRequest(), metadata=_wire.authenticate(channel, MESH_TOKEN),
                                timeout=5).capacity == 2
        refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
        assert len(refused) == 1, refused                     # 50 refusals, one line
        assert "from ipv4:127.0.0.1:" in refused[0] and "missing token" in refused[0]
        assert MESH_TOKEN not in caplog.text
    finally:
        server.shutdown()
