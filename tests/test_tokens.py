"""Tokens are keys: weak ones are refused where they are given, the CLI makes good ones, and a process given
none uses its user's local token, so a loopback server started without one admits no other local user."""
from __future__ import annotations

import os
import secrets
import stat
import subprocess
import textwrap
import uuid

import pytest

import agentmesh
from agentmesh import RpcAgentServerLauncher
from agentmesh._tokens import token_weakness
from conftest import PYTHON
from sample_agents import Echo

WEAK = ["summer2024", "test-mesh-token", "s3cret", "a" * 64, "summer2024" * 4, "0123456789abcdef",
        " " + secrets.token_urlsafe(32)]
STRONG = [secrets.token_urlsafe(32), secrets.token_hex(16), uuid.uuid4().hex, secrets.token_urlsafe(24)]


@pytest.mark.parametrize("token", WEAK)
def test_weak_tokens_are_refused_everywhere_they_are_given(token, runtime, tmp_path):
    assert token_weakness(token) is not None
    with pytest.raises(ValueError, match="agentmesh token new"):
        agentmesh.init(token=token)
    with pytest.raises(ValueError, match="too short or too guessable|white space"):
        RpcAgentServerLauncher(host="127.0.0.1", token=token)
    if token != token.strip():
        return    # a token file's content is read stripped of white space
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    out = subprocess.run([PYTHON, "-m", "agentmesh.cli", "server", "--port", "0", "--token-file", str(token_file)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "agentmesh token new" in out.stderr and token not in out.stderr
    assert "Traceback" not in out.stderr and "agentmesh: agentmesh:" not in out.stderr


@pytest.mark.parametrize("token", STRONG)
def test_random_tokens_are_accepted(token):
    assert token_weakness(token) is None, token


def test_agentmesh_token_new_makes_a_private_file_holding_a_key(tmp_path):
    out = subprocess.run([PYTHON, "-m", "agentmesh.cli", "token", "new"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and token_weakness(out.stdout.strip()) is None
    path = tmp_path / "ns.token"
    made = subprocess.run([PYTHON, "-m", "agentmesh.cli", "token", "new", "--output", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and made.stdout == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert token_weakness(token) is None and token != out.stdout.strip()
    again = subprocess.run([PYTHON, "-m", "agentmesh.cli", "token", "new", "--output", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "File exists" in again.stderr and path.read_text().strip() == token


def test_a_loopback_server_given_no_token_admits_its_users_processes_and_no_one_else(servers, runtime, procs,
                                                                                   tmp_path, monkeypatch):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    monkeypatch.setenv("XDG_CACHE_HOME", str(mine))   # this user's cache folder, fresh for the test
    for name in ("AGENTMESH_TOKEN", "AGENTMESH_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    runtime.configure(token=None)
    server = servers(capacity=4)          # no token anywhere
    local = mine / "agentmesh" / "local.token"
    assert stat.S_IMODE(local.stat().st_mode) == 0o600
    assert stat.S_IMODE(local.parent.stat().st_mode) == 0o700
    assert token_weakness(local.read_text().strip()) is None
    assert Echo("mine").to_dist(host="127.0.0.1", port=server.port).ping(1) == 1   # this user: in

    script = textwrap.dedent(f"""
        import agentmesh
        from sample_agents import Echo
        try:
            print(Echo("x").to_dist(host="127.0.0.1", port={server.port}).ping(2))
        except agentmesh.errors.AuthenticationError as exc:
            print("refused:", exc)
    """)
    env = {"XDG_CACHE_HOME": str(theirs), "AGENTMESH_TOKEN": "", "AGENTMESH_TOKEN_FILE": ""}
    other = procs([PYTHON, "-c", script], env=env, stdout=subprocess.PIPE, text=True)   # another user's view
    said = other.communicate(timeout=60)[0]
    assert said.startswith("refused:") and "did not prove it holds the token" in said, said
    same = procs([PYTHON, "-c", script], env=dict(env, XDG_CACHE_HOME=str(mine)), stdout=subprocess.PIPE,
                 text=True)
    assert same.communicate(timeout=60)[0].strip() == "2"
