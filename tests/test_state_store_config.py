"""The state store setting: from AGENTMESH_STATE_STORE, init(), `agentmesh server --state-store`, the launcher
and child mode into each server's ServerConfig; a URL that cannot be used is refused at start, naming what is
wrong, and a password never shows."""
from __future__ import annotations

import os
import re
import subprocess
import threading

import pytest

import agentmesh
from agentmesh import AgentBase, RpcAgentServerLauncher
from agentmesh._config import ENV_STATE_STORE_PASSWORD_FILE, Settings
from agentmesh._runtime import Runtime, default_runtime
from agentmesh.cli import build_parser, state_store_options
from agentmesh.store import StoreUrlError
from conftest import PYTHON, wait_until

SECRET = "SECRET-pw-Zq7Lm2"
WITH_PASSWORD = f"postgresql://u:{SECRET}@h/db"
PG = "postgresql://u@h:5433/db"


class StoreReport(AgentBase):
    """Tells what its server process was given: its runtime's state store, and the store variables it sees."""

    def report(self) -> dict:
        return {"state_store": default_runtime().settings.state_store,
                "env": os.environ.get("AGENTMESH_STATE_STORE"),
                "password_file_env": os.environ.get(ENV_STATE_STORE_PASSWORD_FILE)}


def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/s.db"


def password_file(tmp_path) -> str:
    path = tmp_path / "pw"
    path.write_text(SECRET + "\n")
    os.chmod(path, 0o600)
    return str(path)


# -- the process's setting --------------------------------------------------------------

def test_the_environment_and_init_set_it(tmp_path, runtime, procs):
    url = sqlite_url(tmp_path)
    assert Settings.from_env({"AGENTMESH_STATE_STORE": url}).state_store == url
    assert Settings.from_env({"AGENTMESH_STATE_STORE": ""}).state_store is None
    assert Settings().replace(state_store=PG).state_store == PG
    agentmesh.init(state_store=url)
    assert runtime.settings.state_store == url
    script = "import agentmesh._runtime as r; print(r.default_runtime().settings.state_store)"
    proc = procs([PYTHON, "-c", script], stdout=subprocess.PIPE, text=True, env={"AGENTMESH_STATE_STORE": PG})
    assert proc.communicate(timeout=30)[0].strip() == PG


@pytest.mark.parametrize("url, problem", [(WITH_PASSWORD, "carries a password"),
                                          ("mysql://u@h/db", "unknown kind 'mysql'"),
                                          ("sqlite://host/s.db", "names no host"),
                                          ("postgresql://u@h", "names no database")])
def test_a_bad_url_is_refused_naming_the_problem(url, problem, runtime):
    before = runtime.settings
    with pytest.raises(StoreUrlError, match=problem) as refused:
        agentmesh.init(state_store=url)
    assert isinstance(refused.value, ValueError) and SECRET not in str(refused.value)
    assert runtime.settings is before                     # nothing changed
    with pytest.raises(StoreUrlError, match=problem):     # from AGENTMESH_STATE_STORE: at the runtime's start
        Runtime(Settings.from_env({"AGENTMESH_STATE_STORE": url}))


# -- agentmesh server --state-store ------------------------------------------------------

def server_args(*args: str) -> dict:
    return state_store_options(build_parser().parse_args(["server", *args]))


def test_the_cli_parses_it_into_the_server_config(tmp_path, monkeypatch):
    monkeypatch.delenv("AGENTMESH_STATE_STORE", raising=False)
    monkeypatch.delenv(ENV_STATE_STORE_PASSWORD_FILE, raising=False)
    url, pw = sqlite_url(tmp_path), password_file(tmp_path)
    assert server_args() == {"state_store": None, "state_store_password_file": None}
    assert server_args("--state-store", url) == {"state_store": url, "state_store_password_file": None}
    assert server_args("--state-store", PG, "--state-store-password-file", pw) == {
        "state_store": PG, "state_store_password_file": pw}
    monkeypatch.chdir(tmp_path)       # a relative SQLite path: made absolute for the server
    assert server_args("--state-store", "sqlite:rel/s.db")["state_store"] == f"sqlite://{tmp_path}/rel/s.db"

    monkeypatch.setenv("AGENTMESH_STATE_STORE", PG)
    monkeypatch.setenv(ENV_STATE_STORE_PASSWORD_FILE, pw)
    assert server_args() == {"state_store": PG, "state_store_password_file": pw}
    assert server_args("--state-store", url)["state_store_password_file"] is None   # SQLite: no password
    for args, problem in ((["--state-store", url, "--state-store-password-file", pw], "takes no password file"),
                          (["--state-store", "", "--state-store-password-file", pw], "without a state store URL"),
                          (["--state-store-password-file", str(tmp_path / "missing")], "is not a file"),
                          (["--state-store", WITH_PASSWORD], "carries a password")):
        with pytest.raises(SystemExit, match=problem) as refused:
            server_args(*args)
        assert str(refused.value).startswith("agentmesh server: ") and SECRET not in str(refused.value)


@pytest.mark.parametrize("args, env, problem", [
    (["--state-store", WITH_PASSWORD], {}, "carries a password"),
    ([], {"AGENTMESH_STATE_STORE": WITH_PASSWORD}, "carries a password"),
    (["--state-store", "redis://h/0"], {}, "unknown kind 'redis'"),
])
def test_the_server_command_refuses_a_bad_url_at_once(args, env, problem, procs):
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", *args], stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("agentmesh server: state store URL ") and problem in err, err
    assert SECRET not in out + err and "Traceback" not in err


def test_the_server_command_starts_and_serves_with_a_sqlite_store(tmp_path, procs, runtime):
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", "--state-store", sqlite_url(tmp_path)],
                 stderr=subprocess.PIPE, text=True, env={"AGENTMESH_LOG_LEVEL": "INFO"})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    wait_until(lambda: proc.poll() is not None or any("listening on" in line for line in lines), timeout=30)
    found = re.search(r"listening on \S+:(\d+)", "".join(lines))
    assert found and proc.poll() is None, "".join(lines)
    port = int(found.group(1))
    agent = StoreReport("r").to_dist(host="127.0.0.1", port=port)
    assert agent.report()["state_store"] == sqlite_url(tmp_path)
    proc.terminate()
    assert proc.wait(15) == 0, "".join(lines)


# -- the launcher and child mode ----------------------------------------------------------

def test_the_launcher_puts_it_in_the_config(tmp_path, runtime):
    url, pw = sqlite_url(tmp_path), password_file(tmp_path)
    assert RpcAgentServerLauncher(host="127.0.0.1").config.state_store is None
    assert RpcAgentServerLauncher(host="127.0.0.1", state_store=url).config.state_store == url
    config = RpcAgentServerLauncher(host="127.0.0.1", state_store=PG, state_store_password_file=pw).config
    assert (config.state_store, config.state_store_password_file) == (PG, pw)
    assert SECRET not in repr(config)
    runtime.configure(state_store=url)     # this process's setting is the default; "" is none
    assert RpcAgentServerLauncher(host="127.0.0.1").config.state_store == url
    assert RpcAgentServerLauncher(host="127.0.0.1", state_store="").config.state_store is None
    for options, problem in (({"state_store": WITH_PASSWORD}, "carries a password"),
                             ({"state_store": url, "state_store_password_file": pw}, "takes no password file")):
        with pytest.raises(ValueError, match=problem) as refused:
            RpcAgentServerLauncher(host="127.0.0.1", **options)
        assert SECRET not in str(refused.value)


def test_a_launched_server_process_gets_it(tmp_path, servers, runtime, monkeypatch):
    monkeypatch.setenv("AGENTMESH_STATE_STORE", PG)   # the config says, not the inherited environment
    url = sqlite_url(tmp_path)
    launcher = servers(state_store=url)
    report = StoreReport("r").to_dist(host="127.0.0.1", port=launcher.port).report()
    assert report == {"state_store": url, "env": None, "password_file_env": None}


def test_child_servers_get_this_process_store(tmp_path, runtime, monkeypatch):
    pw = password_file(tmp_path)
    monkeypatch.setenv(ENV_STATE_STORE_PASSWORD_FILE, pw)   # inherited through the environment
    monkeypatch.chdir(tmp_path)
    runtime.configure(state_store="sqlite:rel.db", child_servers=1)
    assert runtime._child_config().state_store == f"sqlite://{tmp_path}/rel.db"
    report = StoreReport("r").to_dist().report()
    assert report == {"state_store": f"sqlite://{tmp_path}/rel.db", "env": None, "password_file_env": pw}
