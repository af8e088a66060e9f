"""The development registry (`agentmesh registry up`): auth on, secrets in 0600 files, no browser writes."""
import asyncio
import base64
import json
import os
import re
import signal
import stat
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from agentmesh.etcd import EtcdAuthError, EtcdClient
from agentmesh.testing import start_dev_registry
from agentmesh.testing.dev_registry import ROOT
from conftest import PYTHON, kill_pid, pid_alive, wait_until

EVIL_KEY = b"/agentmesh/default/servers/evil"


def http(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One HTTP request as a browser would send it; (status, headers, body) whatever the status."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def browser_put(endpoint: str, **headers: str) -> tuple[int, dict, bytes]:
    """What a page on http://evil.example can send without a preflight: a text/plain POST to the JSON API."""
    body = json.dumps({"key": base64.b64encode(EVIL_KEY).decode(),
                       "value": base64.b64encode(b'{"host": "evil.example", "port": 1}').decode()}).encode()
    return http(f"http://{endpoint}/v3/kv/put", body,
                {"Content-Type": "text/plain", "Origin": "http://evil.example", **headers})


def read_as_root(registry, key: bytes):
    async def read():
        async with EtcdClient(registry.etcd.endpoint, user=ROOT,
                              password=registry.password_file.read_text().strip()) as client:
            return await client.get(key)
    return asyncio.run(read())


@pytest.fixture
def registry(dev_registry):
    return dev_registry


def test_a_cross_origin_post_cannot_write(registry):
    status, headers, body = browser_put(registry.etcd.endpoint)
    assert status >= 400, (status, body)
    assert headers.get("Access-Control-Allow-Origin") in (None, f"http://{registry.etcd.endpoint}")
    rebound = browser_put(registry.etcd.endpoint, Host=f"evil.example:{registry.etcd.client_port}")
    assert rebound[0] >= 400, rebound   # DNS rebinding: a Host that is not loopback is refused
    assert read_as_root(registry, EVIL_KEY) is None


def test_auth_is_on_and_the_secrets_stay_in_private_files(registry):
    folder = registry.directory
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for secret_file in (registry.password_file, registry.token_file):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert len(secret_file.read_text().strip()) >= 32
    password = registry.password_file.read_text().strip()
    with open(f"/proc/{registry.pid}/cmdline", "rb") as fh:
        assert password.encode() not in fh.read()
    assert password not in registry.url and password not in registry.exports()
    assert password not in registry.etcd.log_tail(1000)

    async def check():
        async with EtcdClient(registry.etcd.endpoint) as anonymous:
            with pytest.raises(EtcdAuthError):
                await anonymous.put("/agentmesh/default/x", "1")
            with pytest.raises(EtcdAuthError):
                await anonymous.get("/agentmesh/default/x")
        async with EtcdClient(registry.etcd.endpoint, user=ROOT, password="wrong") as guess:
            with pytest.raises(EtcdAuthError, match="authentication failed"):
                await guess.get("/agentmesh/default/x")
        async with EtcdClient(registry.etcd.endpoint, user=ROOT, password=password) as root:
            await root.put("/agentmesh/default/x", "1")
            assert await root.user_list() == [ROOT]

    asyncio.run(check())
    assert http(f"http://{registry.etcd.endpoint}/health")[0] == 200   # probes still work


def test_started_again_on_its_directory_it_keeps_data_and_secrets(tmp_path):
    first = start_dev_registry(tmp_path / "registry")
    try:
        password, token = first.password_file.read_text(), first.token_file.read_text()

        async def put():
            async with EtcdClient.from_url(first.url, password=password.strip()) as client:
                await client.put("/agentmesh/default/kept", "yes")
        asyncio.run(put())
    finally:
        first.stop()
    again = start_dev_registry(tmp_path / "registry")
    try:
        assert again.password_file.read_text() == password and again.token_file.read_text() == token
        assert read_as_root(again, b"/agentmesh/default/kept").value == b"yes"
    finally:
        again.stop()


def test_a_data_dir_without_its_password_is_refused(tmp_path):
    first = start_dev_registry(tmp_path / "registry")
    first.stop()
    first.password_file.unlink()
    with pytest.raises(ValueError, match="root password is unknown"):
        start_dev_registry(tmp_path / "registry")


def test_registry_up_prints_the_exports_once_and_they_work(tmp_path, procs):
    proc = procs([PYTHON, "-m", "agentmesh.cli", "registry", "up", "--data-dir", str(tmp_path / "reg")],
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    etcd_pid = None
    try:
        wait_until(lambda: any("AGENTMESH_TOKEN_FILE" in line for line in lines) or proc.poll() is not None,
                   timeout=30)
        output = "".join(lines)
        assert proc.poll() is None, output
        etcd_pid = int(output.split("etcd ", 1)[1].split()[0])
        exports = dict(line.strip()[len("export "):].split("=", 1) for line in lines
                       if line.strip().startswith("export "))
        assert set(exports) == {"AGENTMESH_REGISTRY", "AGENTMESH_ETCD_PASSWORD_FILE", "AGENTMESH_TOKEN_FILE"}
        assert output.count("export AGENTMESH_REGISTRY=") == 1
        password = open(exports["AGENTMESH_ETCD_PASSWORD_FILE"]).read().strip()
        token = open(exports["AGENTMESH_TOKEN_FILE"]).read().strip()
        assert password not in output and token not in output
        listing = procs([PYTHON, "-m", "agentmesh.cli", "servers"], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env=exports)
        out, err = listing.communicate(timeout=60)
        assert listing.returncode == 0, err
        assert "0 server(s)" in out and password not in out + err
        by_flag = procs([PYTHON, "-m", "agentmesh.cli", "agents", "--registry", exports["AGENTMESH_REGISTRY"],
                         "--etcd-password-file", exports["AGENTMESH_ETCD_PASSWORD_FILE"]],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        env={"AGENTMESH_TOKEN_FILE": exports["AGENTMESH_TOKEN_FILE"]})
        out, err = by_flag.communicate(timeout=60)
        assert by_flag.returncode == 0 and "0 agent(s)" in out, err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        wait_until(lambda: not pid_alive(etcd_pid), timeout=10)
    finally:
        if etcd_pid is not None:
            kill_pid(etcd_pid)


# -- a data directory others can write to, or symlinks in it, are refused ------------------------
def refused(folder, match: str) -> str:
    """start_dev_registry(folder) raises a ValueError matching match; a registry started anyway is stopped."""
    try:
        registry = start_dev_registry(folder)
    except ValueError as exc:
        assert re.search(match, str(exc)), exc
        return str(exc)
    registry.stop()
    raise AssertionError(f"a registry started on {folder}")


def test_registry_up_refuses_a_data_dir_others_can_write_and_adopts_nothing(tmp_path, procs):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    planted = shared / "namespace.token"
    planted.write_text("planted-by-someone-else\n")
    proc = procs([PYTHON, "-m", "agentmesh.cli", "registry", "up", "--data-dir", str(shared)],
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    wait_until(lambda: proc.poll() is not None or any("AGENTMESH_TOKEN_FILE" in line for line in lines), timeout=30)
    if proc.poll() is None:          # it started: stop it (and its etcd) before failing
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        raise AssertionError("registry up started on a world-writable directory: " + "".join(lines))
    wait_until(lambda: lines, timeout=5)
    output = "".join(lines)
    assert proc.returncode != 0, output
    assert str(shared) in output and "group or others may write to it (mode 777)" in output
    assert sorted(p.name for p in shared.iterdir()) == ["namespace.token"]   # no password made, no etcd data
    assert planted.read_text() == "planted-by-someone-else\n"
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777          # reported, not silently changed

    os.chmod(shared, 0o770)                                       # group-writable is as bad
    refused(shared, r"group or others may write to it \(mode 770\)")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_data_dir_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    refused(theirs, f"{theirs}.*belongs to uid 65534")
    assert list(theirs.iterdir()) == []


@pytest.mark.parametrize("name", ["namespace.token", "root.password"])
def test_a_symlink_in_place_of_a_secret_file_is_refused_and_its_target_untouched(tmp_path, name):
    target = tmp_path / "someone-elses-file"
    target.write_text("not a token\n")
    os.chmod(target, 0o644)
    folder = tmp_path / "registry"
    folder.mkdir(mode=0o700)
    (folder / name).symlink_to(target)
    refused(folder, f"{folder / name}: it is a symbolic link")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.read_text() == "not a token\n"
    assert not (folder / "etcd-data").exists()


def test_a_symlink_in_place_of_the_etcd_data_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    folder = tmp_path / "registry"
    folder.mkdir(mode=0o700)
    (folder / "etcd-data").symlink_to(elsewhere)
    refused(folder, "etcd-data/ directory .*it is a symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_a_fresh_private_data_dir_works_and_a_loose_secret_is_made_private(tmp_path):
    folder = tmp_path / "fresh"
    registry = start_dev_registry(folder)
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(registry.token_file.stat().st_mode) == 0o600
    finally:
        registry.stop()
    os.chmod(registry.token_file, 0o644)     # the owner's own file, loosened: tightened again, not refused
    again = start_dev_registry(folder)
    try:
        assert stat.S_IMODE(again.token_file.stat().st_mode) == 0o600
    finally:
        again.stop()
