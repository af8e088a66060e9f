"""Secrets: token files (CLI, environment, init, launcher), nothing secret in argv, passwords masked in logs."""
import logging
import os
import re
import signal
import subprocess
import threading

import pytest

import agentmesh
from agentmesh import Msg, RpcAgentServerLauncher
from agentmesh._config import Settings, read_secret
from agentmesh.discovery import keys
from conftest import PYTHON, etcd_get_prefix, wait_until
from sample_agents import Echo

TOKEN = "tok-Wm4Zq8Xr1Tc6Vb3Nk9Jh2Lf5Gd7Sp0Ay"
PLAIN = "plain-Jx2Qw7Zr4Vn9Tk1Ub6Mc3Lh8Gp5Fd0Es"


def secret_file(folder, text: str, mode: int = 0o600, name: str = "token") -> str:
    path = folder / name
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def proc_text(pid: int, what: str) -> bytes:
    """/proc/PID/cmdline or /proc/PID/environ: what every local user (or the owner) can read."""
    with open(f"/proc/{pid}/{what}", "rb") as fh:
        return fh.read()


def start_cli(procs, *args: str, env: dict | None = None):
    """`agentmesh server ARGS` with every stderr line collected; returns (proc, port, lines) once it listens."""
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", *args], stderr=subprocess.PIPE, text=True, env=env or {})
    lines: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    wait_until(lambda: proc.poll() is not None or any("listening on" in line for line in lines), timeout=30)
    found = re.search(r"listening on \S+:(\d+)", "".join(lines))
    assert found and proc.poll() is None, "".join(lines)
    return proc, int(found.group(1)), lines


def stop_cli(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


# -- reading a secret file ------------------------------------------------------

def test_read_secret_strips_the_newline_and_refuses_bad_files(tmp_path, caplog):
    assert read_secret(secret_file(tmp_path, TOKEN + "\n")) == TOKEN
    assert read_secret(secret_file(tmp_path, TOKEN + "\r\n")) == TOKEN
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for text, why in (("", "empty"), ("\n", "empty"), ("a\nb\n", "more than one line")):
        with pytest.raises(ValueError, match=why) as refused:
            read_secret(secret_file(tmp_path, text))
        assert str(tmp_path / "token") in str(refused.value)
    with pytest.raises(ValueError, match="cannot be read") as refused:
        read_secret(str(tmp_path / "missing"))
    assert "missing" in str(refused.value)
    unreadable = secret_file(tmp_path, TOKEN, mode=0o000, name="locked")
    if os.geteuid() != 0:   # root reads anything
        with pytest.raises(ValueError, match="cannot be read"):
            read_secret(unreadable)
    caplog.clear()
    assert read_secret(secret_file(tmp_path, TOKEN, mode=0o644)) == TOKEN
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "chmod 600" in warned[0] and "644" in warned[0]
    assert TOKEN not in caplog.text


def test_settings_and_init_take_a_token_file(tmp_path, runtime):
    path = secret_file(tmp_path, TOKEN + "\n")
    settings = Settings.from_env({"AGENTMESH_TOKEN_FILE": path})
    assert settings.token == TOKEN and TOKEN not in repr(settings)
    with pytest.raises(ValueError, match="AGENTMESH_TOKEN and AGENTMESH_TOKEN_FILE"):
        Settings.from_env({"AGENTMESH_TOKEN_FILE": path, "AGENTMESH_TOKEN": "other"})
    assert Settings().replace(token_file=path).token == TOKEN
    assert Settings().replace(etcd_password_file=path).etcd_options() == {"password": TOKEN}
    agentmesh.init(token_file=path)
    assert runtime.settings.token == TOKEN
    agentmesh.init(token=PLAIN)        # a token given later replaces the file's
    assert runtime.settings.token == PLAIN
    with pytest.raises(ValueError, match="token= and token_file="):
        agentmesh.init(token=PLAIN, token_file=path)
    with pytest.raises(ValueError, match="empty"):
        agentmesh.init(token_file=secret_file(tmp_path, "\n", name="empty"))


# -- servers: the token never in argv or the environment ---------------------------

def test_launcher_token_file_reaches_the_server_process_over_its_pipe(tmp_path, runtime):
    path = secret_file(tmp_path, TOKEN + "\n")
    with pytest.raises(ValueError, match="token= and token_file="):
        RpcAgentServerLauncher(host="127.0.0.1", token=PLAIN, token_file=path)
    launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=2, token_file=path)
    assert launcher.token == TOKEN
    launcher.launch(in_subprocess=True)
    try:
        for what in ("cmdline", "environ"):
            assert TOKEN.encode() not in proc_text(launcher.pid, what)
        runtime.configure(token=TOKEN)
        agent = Echo("E").to_dist(host="127.0.0.1", port=launcher.port)
        assert agent.reply(Msg("u", 1)).content["count"] == 1
    finally:
        launcher.shutdown()


def test_cli_warns_about_token_in_argv_and_reads_token_file(tmp_path, procs, runtime):
    proc, _, lines = start_cli(procs, "--token", TOKEN)
    stop_cli(proc)
    warned = [line for line in lines if "WARNING" in line and "--token" in line]
    assert warned and "--token-file" in warned[0] and TOKEN not in "".join(lines)

    path = secret_file(tmp_path, TOKEN + "\n")
    proc, port, lines = start_cli(procs, "--token-file", path, "--agent-class", "sample_agents:Echo")
    try:
        assert TOKEN.encode() not in proc_text(proc.pid, "cmdline")
        assert not [line for line in lines if "WARNING" in line and "--token " in line]
        runtime.configure(token=TOKEN)
        assert Echo("E").to_dist(host="127.0.0.1", port=port).reply(Msg("u", 1)).content["count"] == 1
    finally:
        stop_cli(proc)

    for args, why in ((["--token", "a", "--token-file", path], "both --token and --token-file"),
                      (["--token-file", str(tmp_path / "missing")], "cannot be read"),
                      (["--token-file", secret_file(tmp_path, "", name="empty")], "is empty")):
        refused = procs([PYTHON, "-m", "agentmesh.cli", "server", *args], stderr=subprocess.PIPE, text=True)
        _, err = refused.communicate(timeout=30)
        assert refused.returncode != 0 and why in err, err


# -- registry passwords never in logs ---------------------------------------------

def test_registry_password_never_reaches_the_logs_of_a_server_start(dev_registry, namespace, procs, capfd,
                                                                    caplog, monkeypatch):
    password = dev_registry.password_file.read_text().strip()
    endpoint = dev_registry.etcd.endpoint
    url = f"etcd://root:{password}@{endpoint}"
    token_env = {"AGENTMESH_TOKEN_FILE": str(dev_registry.token_file), "AGENTMESH_LOG_LEVEL": "DEBUG"}
    listing = keys.servers_prefix(namespace)

    def registered() -> int:
        return len(etcd_get_prefix(url, listing))

    # the CLI, with the password in --registry (warned about), at DEBUG (AGENTMESH_LOG_LEVEL)
    proc, _, lines = start_cli(procs, "--registry", url, "--namespace", namespace, env=token_env)
    wait_until(registered)
    stop_cli(proc)
    cli_logs = "".join(lines)
    assert "root:***@" in cli_logs and "AGENTMESH_ETCD_PASSWORD_FILE" in cli_logs

    # a launched server process (the password travels on its config pipe) and one in this process
    for name, value in token_env.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG, logger="agentmesh")
    token_file = str(dev_registry.token_file)
    launched = RpcAgentServerLauncher(host="127.0.0.1", registry=url, namespace=namespace, token_file=token_file)
    launched.launch(in_subprocess=True)
    try:
        assert password.encode() not in proc_text(launched.pid, "cmdline") + proc_text(launched.pid, "environ")
        wait_until(lambda: registered() == 1)
    finally:
        launched.shutdown()
    wrong = RpcAgentServerLauncher(host="127.0.0.1", registry=f"etcd://root:{password}-wrong@{endpoint}",
                                   namespace=namespace, token_file=token_file)
    wrong.launch(in_subprocess=False)   # registration keeps failing: its log lines carry the URL
    wrong.shutdown()
    captured = capfd.readouterr()
    for text in (cli_logs, captured.out, captured.err, caplog.text):
        assert password not in text
    assert "root:***@" in caplog.text and "refused authentication" in caplog.text
