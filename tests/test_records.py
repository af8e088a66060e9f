"""Registry records (issue 23, trust round two): bound to their lease, fresh, checked by a schema; labels checked
at server start; nothing from a record reaches the terminal raw; a server cut off from its registry starts and
stops without false alarms."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import unicodedata

import pytest

from agentmesh import RpcAgentServerLauncher, _trust
from agentmesh.discovery import keys
from agentmesh.testing import free_port
from agentmesh.testing import wire as _wire
from conftest import MESH_TOKEN, PYTHON, ROOT, wait_until
from sample_agents import Echo
from test_trust import _etcd


def raw_get(url: str, key: str) -> bytes | None:
    async def get(client):
        kv = await client.get(key)
        return kv.value if kv is not None else None

    return _etcd(url, get)


def raw_put(url: str, key: str, value: bytes, ttl: int = 30) -> int:
    """Write key as anyone with write access to etcd can, under a lease of the writer's own; the lease id."""
    async def put(client):
        lease = await client.lease_grant(ttl)
        await client.put(key, value, lease=lease)
        return lease

    return _etcd(url, put)


def server_record(server_id: str, address: str = "127.0.0.1:9", **changes) -> dict:
    """A complete, valid server record (the lease and signing time are added by put_signed)."""
    host, port = address.rsplit(":", 1)
    return {"server_id": server_id, "host": host, "port": int(port), "address": address, "capacity": 10,
            "agents": 0, "inflight": 0, "labels": {}, "pid": 1, "hostname": "h", "started_at": time.time(),
            "version": "1", "python": _wire.PYTHON_VERSION, "classes": [], "ship_classes": True, "epoch": 1,
            "status": "SERVING", "updated_at": time.time(), **changes}


def put_signed(url: str, namespace: str, path: str, record: dict, signed_at: float | None = None) -> None:
    """Write a record signed with the namespace token, as a token holder would, bound to a lease of its own."""
    key = _trust.namespace_key(MESH_TOKEN, namespace)

    async def put(client):
        lease = await client.lease_grant(30)
        await client.put(path, _trust.sign_record(key, path, record, lease, signed_at), lease=lease)

    _etcd(url, put)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "agentmesh.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=dict(os.environ, AGENTMESH_TOKEN=MESH_TOKEN,
                                             PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])))


def listed(url: str, namespace: str) -> dict[str, str]:
    """{server_id: address} as `agentmesh servers --json` lists them."""
    out = cli("servers", "--json", "--registry", url, "--namespace", namespace)
    assert out.returncode == 0, out.stderr
    return {r["server_id"]: r["address"] for r in json.loads(out.stdout)}


def address_in_registry(url: str, key: str) -> str | None:
    value = raw_get(url, key)
    return json.loads(value)["address"] if value else None


# -- 9: a record is bound to its lease and fresh -------------------------------------------------------------
def test_a_replayed_record_of_an_earlier_run_is_ignored_and_the_server_rewrites_its_own(mesh, namespace, servers,
                                                                                       caplog):
    first = servers(capacity=4, registry=mesh.url, namespace=namespace, server_id="same-id")
    key = keys.server_key(namespace, "same-id")
    old = wait_until(lambda: raw_get(mesh.url, key))
    first.shutdown()
    wait_until(lambda: raw_get(mesh.url, key) is None)
    raw_put(mesh.url, key, old)             # the old record, validly signed, under a lease of the writer's
    out = cli("servers", "--json", "--registry", mesh.url, "--namespace", namespace)
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stdout
    assert out.stderr.count(key) == 1 and "lease" in out.stderr, out.stderr

    second = servers(capacity=4, registry=mesh.url, namespace=namespace, server_id="same-id")
    wait_until(lambda: address_in_registry(mesh.url, key) == second.address)
    raw_put(mesh.url, key, old)             # again, now hiding the running server
    from agentmesh.discovery.records import REFRESH_EVERY

    # the server notices that someone else wrote its key and writes its own record again, before its refresh
    wait_until(lambda: address_in_registry(mesh.url, key) == second.address, timeout=REFRESH_EVERY - 1)
    assert listed(mesh.url, namespace) == {"same-id": second.address}
    assert {Echo(f"e{i}").to_dist().server for i in range(3)} == {second.address}

    _etcd(mesh.url, lambda client: client.delete(key))   # deleted: written again as well
    wait_until(lambda: address_in_registry(mesh.url, key) == second.address, timeout=REFRESH_EVERY - 1)


def test_a_server_record_signed_long_ago_is_ignored(mesh, namespace):
    put_signed(mesh.url, namespace, keys.server_key(namespace, "old"), server_record("old"),
               signed_at=time.time() - 3600)
    put_signed(mesh.url, namespace, keys.server_key(namespace, "new"), server_record("new"))
    out = cli("servers", "--json", "--registry", mesh.url, "--namespace", namespace)
    assert out.returncode == 0, out.stderr
    assert [r["server_id"] for r in json.loads(out.stdout)] == ["new"]
    assert out.stderr.count(keys.server_key(namespace, "old")) == 1 and "ago" in out.stderr, out.stderr


def test_an_idle_server_signs_its_record_again_and_binds_it_to_its_lease(mesh, namespace, servers):
    s = servers(capacity=4, registry=mesh.url, namespace=namespace)
    key = keys.server_key(namespace, s.server_id)
    first = json.loads(wait_until(lambda: raw_get(mesh.url, key)))

    async def kv(client):
        return await client.get(key)

    assert first["lease"] == _etcd(mesh.url, kv).lease != 0
    from agentmesh.discovery.records import MAX_AGE, REFRESH_EVERY

    assert 3 * REFRESH_EVERY <= MAX_AGE
    wait_until(lambda: json.loads(raw_get(mesh.url, key))["signed_at"] > first["signed_at"],
               timeout=REFRESH_EVERY + 3)


# -- 10: a record that does not match the schema is skipped, with one warning -------------------------------
def test_a_signed_record_with_wrong_types_is_skipped_with_one_warning_everywhere(mesh, namespace, servers, runtime,
                                                                              tmp_path, caplog):
    good = servers(capacity=10, registry=mesh.url, namespace=namespace, metrics_port=0)
    wait_until(lambda: raw_get(mesh.url, keys.server_key(namespace, good.server_id)))
    lots, gpu = keys.server_key(namespace, "lots"), keys.server_key(namespace, "gpu")
    put_signed(mesh.url, namespace, lots, server_record("lots", capacity="lots", metrics="127.0.0.1:9"))
    put_signed(mesh.url, namespace, gpu, server_record("gpu", labels="gpu", metrics="127.0.0.1:9"))

    for command in (["servers"], ["servers", "--json"], ["top", "--once", "--json", "--interval", "0.2"],
                    ["prometheus-targets", "--output", str(tmp_path / "targets.json")]):
        out = cli(*command, "--registry", mesh.url, "--namespace", namespace)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (command, out.stderr)
        assert out.stderr.count(lots) == 1 and out.stderr.count(gpu) == 1, (command, out.stderr)
        assert "'capacity'" in out.stderr and "'labels'" in out.stderr, out.stderr
        assert good.server_id in out.stdout or command[0] == "prometheus-targets", out.stdout
    targets = json.loads((tmp_path / "targets.json").read_text())
    assert [t["labels"]["server_id"] for t in targets] == [good.server_id]

    with caplog.at_level("WARNING", logger="agentmesh"):
        assert {Echo(f"e{i}").to_dist().server for i in range(3)} == {good.address}
        put_signed(mesh.url, namespace, lots, server_record("lots", capacity="lots"))     # written again
        put_signed(mesh.url, namespace, keys.server_key(namespace, "sentinel"),
                   server_record("sentinel", status="DRAINING"))
        view = runtime.started_view(mesh.url, namespace)
        wait_until(lambda: "sentinel" in view.servers)     # the watch delivered the rewrite before it
        assert {Echo(f"f{i}").to_dist().server for i in range(3)} == {good.address}
    assert len([r for r in caplog.records if lots in r.getMessage()]) == 1, caplog.text


# -- 11: labels are checked when a server starts; control characters never reach the terminal ---------------
@pytest.mark.parametrize("labels, named", [
    ({"a-b": "1"}, "a-b"), ({"label_ключ": "1"}, "label_ключ"), ({"1gpu": "1"}, "1gpu"), ({"": "1"}, "''"),
    ({"zone": "\x1b[31mred"}, "zone"), ({"zone": "a\nb"}, "zone"), ({"zone": "x" * 300}, "zone"),
    ({"zone": 1}, "zone")])
def test_bad_labels_are_refused_when_a_server_starts(etcd, namespace, labels, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        RpcAgentServerLauncher(host="127.0.0.1", registry=etcd.url, namespace=namespace, token=MESH_TOKEN,
                               labels=labels)


def test_the_server_command_refuses_a_bad_label_before_it_listens(etcd, namespace, procs):
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", "--registry", etcd.url, "--namespace", namespace,
                  "--label", "gpu=1", "--label", "a-b=1"], stderr=subprocess.PIPE, text=True,
                 env={"AGENTMESH_TOKEN": MESH_TOKEN})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "'a-b'" in err and "listening" not in err, err


def _control_characters(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) == "Cc" and c != "\n"]


def test_the_cli_never_prints_control_characters_from_the_registry(mesh, namespace, servers):
    s = servers(capacity=4, registry=mesh.url, namespace=namespace)
    agent = Echo("evil\x1b[2Jname").to_dist(host="127.0.0.1", port=s.port)
    agent.ping()
    raw_put(mesh.url, keys.server_key(namespace, "forged\x1b[31m"), b"{}")
    put_signed(mesh.url, namespace, keys.server_key(namespace, "painted"),
               server_record("painted", labels={"zone": "\x1b[31mred"}))
    wait_until(lambda: raw_get(mesh.url, keys.agent_key(namespace, agent.agent_id)))
    servers_out = cli("servers", "--registry", mesh.url, "--namespace", namespace)
    agents_out = cli("agents", "--registry", mesh.url, "--namespace", namespace)
    for out in (servers_out, agents_out):
        assert out.returncode == 0, out.stderr
        assert not _control_characters(out.stdout + out.stderr), out.stdout + out.stderr
    assert s.server_id in servers_out.stdout and "painted" not in servers_out.stdout
    assert "forged" in servers_out.stderr and servers_out.stderr.count("painted") == 1
    assert "evil" in agents_out.stdout


# -- 16: a server whose registry is unreachable ----------------------------------------------------------------
def test_a_server_cut_off_from_its_registry_neither_reports_a_stop_nor_leaks_a_task(procs):
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", "--registry", f"etcd://127.0.0.1:{free_port()}"],
                 stderr=subprocess.PIPE, text=True, env={"AGENTMESH_TOKEN": MESH_TOKEN})
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:            # up to its second retry after it listens (signals handled)
        lines.append(proc.stderr.readline())
        after = "".join(lines).partition("listening on")[2]
        if not lines[-1] or after.count("unavailable") >= 2:
            break
    assert "listening on" in "".join(lines), "".join(lines)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "stopped for" not in output and "Task was destroyed" not in output, output
    assert "stopped" in rest, output
