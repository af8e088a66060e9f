"""Durable agents (issue 26): named, detached agents whose state outlives their server and their creator, in a
real SQLite file and a real PostgreSQL, with real etcd, real servers and real client processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

import agentmesh
from agentmesh.discovery import keys
from agentmesh.store import NameTakenError, open_store
from conftest import MESH_TOKEN, ROOT, etcd_get_prefix, wait_until
from sample_agents import Echo

#: a client process: init from the environment, then run the code given as argv[1]; it prints one JSON line
CLIENT = textwrap.dedent("""
    import json, os, sys
    import agentmesh
    from agentmesh import Msg
    from sample_agents import Echo
    agentmesh.init(state_store=os.environ["STORE_URL"])
    out = {}
    exec(sys.argv[1])
    print(json.dumps(out), flush=True)
""")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """(URL, env for the password) of a fresh store of each kind."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state.db", {}
    pg = request.getfixturevalue("postgres")
    url = pg.create_database(f"d_{uuid.uuid4().hex[:12]}")
    return url, {"AGENTMESH_STATE_STORE_PASSWORD_FILE": pg.password_file}


def client(mesh, namespace, store, code: str, timeout: float = 60.0) -> dict:
    """Run code in a client process of the namespace (its token and the store from the environment)."""
    url, extra = store
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), STORE_URL=url,
               AGENTMESH_REGISTRY=mesh.url, AGENTMESH_NAMESPACE=namespace, AGENTMESH_TOKEN=MESH_TOKEN, **extra)
    done = subprocess.run([sys.executable, "-c", CLIENT, textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0, f"client failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_servers(servers, mesh, namespace, store, n: int):
    url, extra = store
    for name, value in extra.items():
        os.environ[name] = value        # the servers' password file, from their environment
    launched = [servers(capacity=50, registry=mesh.url, namespace=namespace, state_store=url) for _ in range(n)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == n)
    return launched


def test_a_detached_agent_outlives_its_server_and_its_creator(mesh, namespace, servers, store_url):
    launched = start_servers(servers, mesh, namespace, store_url, 2)
    made = client(mesh, namespace, store_url, """
        a = Echo("kept").to_dist(name="keeper", lifetime="detached")
        out["counts"] = [a(Msg("u", i)).content["count"] for i in range(3)]
        out["server"] = a.server
    """)
    assert made["counts"] == [1, 2, 3]
    victim = next(s for s in launched if made["server"].endswith(f":{s.port}"))
    os.kill(victim.pid, signal.SIGKILL)
    later = client(mesh, namespace, store_url, """
        b = agentmesh.get_agent("keeper")
        out["count"] = b(Msg("u", "four")).content["count"]
        out["server"] = b.server
    """)
    assert later["count"] == 4                       # the fourth call, on the state of three
    assert later["server"] != made["server"]


def test_a_live_name_is_refused_and_delete_frees_it(mesh, namespace, servers, store_url):
    start_servers(servers, mesh, namespace, store_url, 1)
    url, extra = store_url
    for name, value in extra.items():
        os.environ[name] = value
    agentmesh.init(registry=mesh.url, namespace=namespace, token=MESH_TOKEN, state_store=url)
    try:
        a = Echo("one").to_dist(name="solo", lifetime="detached")
        assert a(agentmesh.Msg("u", 1)).content["count"] == 1
        with pytest.raises(NameTakenError) as taken:
            Echo("two").to_dist(name="solo")
        assert "'solo'" in str(taken.value)
        same = Echo("ignored").to_dist(name="solo", get_if_exists=True)
        assert same.agent_id == a.agent_id and same(agentmesh.Msg("u", 2)).content["count"] == 2
        assert agentmesh.delete_agent("solo") is True
        assert agentmesh.delete_agent("solo") is False
        with pytest.raises(agentmesh.errors.UnknownAgentError, match="'solo'"):
            agentmesh.get_agent("solo")
        again = Echo("three").to_dist(name="solo", lifetime="detached")
        assert again(agentmesh.Msg("u", 1)).content["count"] == 1     # a new agent: nothing of the old state
        check = open_store(url)
        try:
            assert check.by_name(namespace, "solo").agent_id == again.agent_id
        finally:
            check.close()
    finally:
        agentmesh.shutdown()
        agentmesh.init(registry=mesh.url, namespace=namespace, token=MESH_TOKEN, state_store="")


def test_an_owned_named_agent_ends_with_its_creator_and_its_row_goes(mesh, namespace, servers, store_url):
    start_servers(servers, mesh, namespace, store_url, 1)
    made = client(mesh, namespace, store_url, """
        a = Echo("mine").to_dist(name="mine")
        out["count"] = a(Msg("u", 1)).content["count"]
    """)
    assert made["count"] == 1
    url, extra = store_url
    for name, value in extra.items():
        os.environ[name] = value
    check = open_store(url)
    try:
        assert check.by_name(namespace, "mine") is None
    finally:
        check.close()


def test_durable_options_are_checked():
    with pytest.raises(ValueError, match="lifetime"):
        Echo("x").to_dist(lifetime="forever")
    with pytest.raises(ValueError, match="get_if_exists"):
        Echo("x").to_dist(get_if_exists=True)
    with pytest.raises(agentmesh.AgentCreationError, match="state store"):
        Echo("x").to_dist(name="nowhere")
