"""`agentmesh agents` with a state store: each agent's stored name and lifetime, and the durable agents no server
hosts now (stored, not active), from a real SQLite file and a real PostgreSQL, with real etcd and real servers."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest

from agentmesh.discovery import keys
from conftest import MESH_TOKEN, PYTHON, ROOT, etcd_get_prefix, wait_until
from sample_agents import Echo

NOT_ACTIVE = "(stored, not active)"

#: the creator of the detached agent: a process that makes it on the given server, calls it once and ends
CREATOR = textwrap.dedent("""
    import json, os, sys
    import agentmesh
    from agentmesh import Msg
    from sample_agents import Echo
    agentmesh.init(state_store=os.environ["STORE_URL"])
    a = Echo("kept").to_dist(name="keeper", lifetime="detached", host="127.0.0.1", port=int(sys.argv[1]))
    print(json.dumps({"count": a(Msg("u", 1)).content["count"], "id": a.agent_id, "server": a.server}))
""")


def _env(**extra: str) -> dict[str, str]:
    """The tests' environment with the namespace token, without any state store of the caller's."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTMESH_STATE_STORE"}
    return {**env, "AGENTMESH_TOKEN": MESH_TOKEN, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
            **extra}


def agents(url: str, namespace: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`agentmesh agents` of the namespace, run to its end."""
    return subprocess.run([PYTHON, "-m", "agentmesh.cli", "agents", "--registry", url, "--namespace", namespace,
                           *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=_env(**env))


def table(out: subprocess.CompletedProcess) -> tuple[list[str], dict[str, str], str]:
    """(the header's columns, {agent id: its line}, the summary line) of a table that was printed."""
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    return lines[0].split("  "), {line.split()[0]: line for line in lines[1:-1]}, lines[-1]


def as_json(out: subprocess.CompletedProcess) -> dict[str, dict]:
    assert out.returncode == 0, out.stderr
    return {r["agent_id"]: r for r in json.loads(out.stdout)}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path, monkeypatch):
    """A fresh store of each kind; a PostgreSQL one's password file in the environment (servers inherit it)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state.db"
    pg = request.getfixturevalue("postgres")
    monkeypatch.setenv("AGENTMESH_STATE_STORE_PASSWORD_FILE", pg.password_file)
    return pg.create_database(f"d_{uuid.uuid4().hex[:12]}")


def test_agents_shows_stored_names_lifetimes_and_stored_agents_no_server_hosts(mesh, namespace, servers, runtime,
                                                                                store_url):
    doomed = servers(capacity=10, registry=mesh.url, namespace=namespace, state_store=store_url, registry_ttl=2)
    kept = servers(capacity=10, registry=mesh.url, namespace=namespace, state_store=store_url)
    made = subprocess.run([sys.executable, "-c", CREATOR, str(doomed.port)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=_env(STORE_URL=store_url, AGENTMESH_REGISTRY=mesh.url,
                                                         AGENTMESH_NAMESPACE=namespace))
    assert made.returncode == 0, made.stderr
    keeper = json.loads(made.stdout.splitlines()[-1])          # its creator is gone now
    assert keeper["count"] == 1 and keeper["server"] == f"127.0.0.1:{doomed.port}"
    runtime.configure(state_store=store_url)
    mine = Echo("m").to_dist(name="mine", host="127.0.0.1", port=kept.port)          # owned: this process's
    plain = Echo("p").to_dist(host="127.0.0.1", port=kept.port)                      # not durable: no row
    assert mine.get_count() == 0 and plain.get_count() == 0
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.agents_prefix(namespace))) == 3)

    # without a store: as before, no stored fields
    header, _, summary = table(agents(mesh.url, namespace))
    assert [h.strip() for h in header if h.strip()] == ["ID", "NAME", "CLASS", "SERVER", "ADDRESS"]
    assert summary == f"3 agent(s) in namespace {namespace!r} of {mesh.url}"
    assert all("lifetime" not in r and "active" not in r for r in as_json(agents(mesh.url, namespace, "--json"))
               .values())

    # with one (--state-store, or AGENTMESH_STATE_STORE)
    header, rows, summary = table(agents(mesh.url, namespace, "--state-store", store_url))
    assert [h.strip() for h in header if h.strip()] == ["ID", "NAME", "STORED NAME", "LIFETIME", "CLASS", "SERVER",
                                                        "ADDRESS"]
    assert rows[keeper["id"]].split()[1:6] == ["kept", "keeper", "detached", "sample_agents:Echo", doomed.server_id]
    assert rows[mine.agent_id].split()[1:6] == ["m", "mine", "owned", "sample_agents:Echo", kept.server_id]
    assert rows[plain.agent_id].split()[1:4] == ["p", "-", "-"]
    assert summary.startswith(f"3 agent(s) in namespace {namespace!r} of {mesh.url}: 3 live, 0 stored and not "
                              f"active (state store "), summary
    listed = as_json(agents(mesh.url, namespace, "--json", AGENTMESH_STATE_STORE=store_url))
    assert {k: listed[keeper["id"]][k] for k in ("stored_name", "lifetime", "active", "address")} == \
        {"stored_name": "keeper", "lifetime": "detached", "active": True, "address": keeper["server"]}
    assert (listed[mine.agent_id]["stored_name"], listed[mine.agent_id]["lifetime"]) == ("mine", "owned")
    assert (listed[plain.agent_id]["stored_name"], listed[plain.agent_id]["lifetime"]) == (None, None)

    # the detached agent's server dies: the store still lists it, no server hosts it
    os.kill(doomed.pid, signal.SIGKILL)
    wait_until(lambda: keys.agent_key(namespace, keeper["id"]) not in etcd_get_prefix(
        mesh.url, keys.agents_prefix(namespace)), timeout=15)
    _, rows, summary = table(agents(mesh.url, namespace, "--state-store", store_url))
    assert rows[keeper["id"]].split()[1:5] == ["-", "keeper", "detached", "sample_agents:Echo"]
    assert NOT_ACTIVE in rows[keeper["id"]] and rows[mine.agent_id].split()[3] == "owned"
    assert ": 2 live, 1 stored and not active (state store " in summary, summary
    assert list(rows)[-1] == keeper["id"]                     # after the live ones
    listed = as_json(agents(mesh.url, namespace, "--json", "--state-store", store_url, "--name", "keep*"))
    assert listed == {keeper["id"]: {"agent_id": keeper["id"], "name": None, "class": "sample_agents:Echo",
                                     "server_id": None, "address": None, "stored_name": "keeper",
                                     "lifetime": "detached", "active": False}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_store_that_cannot_be_read_ends_agents_with_one_line_naming_it(etcd, namespace, tmp_path):
    secret = tmp_path / "pg-password"
    secret.write_text("hunter3\n")
    secret.chmod(0o600)
    cases = {  # URL: what the line says
        f"sqlite://{tmp_path}/nowhere/state.db": f"state store sqlite://{tmp_path}/nowhere/state.db: no such file",
        f"sqlite://{tmp_path}/typo.db": f"state store sqlite://{tmp_path}/typo.db: no such file",
        "bogus://host/db": "unknown kind 'bogus'",
        "postgresql://u:hunter2@127.0.0.1/db": "carries a password",
        f"postgresql://u@127.0.0.1:{_free_port()}/db": "cannot connect",
    }
    running = {url: subprocess.Popen([PYTHON, "-m", "agentmesh.cli", "agents", "--registry", etcd.url,
                                      "--namespace", namespace, "--state-store", url], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=_env(AGENTMESH_STATE_STORE_PASSWORD_FILE=str(secret)))
               for url in cases}
    for url, says in cases.items():
        stdout, stderr = running[url].communicate(timeout=60)
        assert running[url].returncode != 0 and not stdout, (url, stdout, stderr)
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("agentmesh agents: "), (url, stderr)
        assert says in stderr and "hunter" not in stderr and "Traceback" not in stderr, (url, stderr)
    assert not (tmp_path / "typo.db").exists()                 # a listing makes no store
