"""Every message a user reads is true (issue 24): logs, errors and CLI output say what happened, once.

Each test reproduces one message with real parts (etcd, server processes,
certificates from make-local-ca) and checks the new text and the absence of
the old.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys

import pytest

from agentmesh import Msg, errors
from agentmesh.discovery import keys
from conftest import MESH_TOKEN, PYTHON, ROOT, etcd_get_prefix, wait_until
from sample_agents import Echo
from tls_helpers import certs, health, tls_server, tls_settings  # noqa: F401 - certs, tls_settings: fixtures


def registered(url: str, namespace: str, count: int) -> bool:
    return len(etcd_get_prefix(url, keys.servers_prefix(namespace))) == count


def read_until(proc: subprocess.Popen, text: str, timeout: float = 30) -> str:
    """What proc wrote to its stderr (a pipe) up to the line holding text; fails when it never comes."""
    lines: list[str] = []

    def arrived() -> bool:
        lines.append(proc.stderr.readline())
        return text in lines[-1] or (not lines[-1] and proc.poll() is not None)

    wait_until(arrived, timeout=timeout, interval=0)
    assert text in lines[-1], "".join(lines)
    return "".join(lines)


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the agentmesh command to its end (the tests' token unless env says otherwise)."""
    return subprocess.run([PYTHON, "-m", "agentmesh.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "AGENTMESH_TOKEN": MESH_TOKEN, **env,
                                         "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])})


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM proc (by its PID) and return the rest of its stderr."""
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=30)[1]


# -- 5: failover's summary counts each agent once ------------------------------------------------------------
def test_a_crash_summary_counts_each_agent_once_though_the_process_holds_copies(mesh, namespace, servers, caplog):
    caplog.set_level("DEBUG", logger="agentmesh.rpc")
    victim = servers(capacity=8, registry=mesh.url, namespace=namespace)
    wait_until(lambda: registered(mesh.url, namespace, 1))
    writers = [Echo(f"Writer{i}").to_dist() for i in range(2)]
    copies = [pickle.loads(pickle.dumps(w)) for w in writers]     # a second binding of each agent
    assert [p.ping(i) for i, p in enumerate(writers + copies)] == [0, 1, 2, 3]
    servers(capacity=8, registry=mesh.url, namespace=namespace)
    wait_until(lambda: registered(mesh.url, namespace, 2))
    os.kill(victim.pid, signal.SIGKILL)
    assert [p.ping(i) for i, p in enumerate(writers + copies)] == [0, 1, 2, 3]

    def summaries() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and " lost (" in r.getMessage()]

    wait_until(summaries)
    assert len(summaries()) == 1 and " 2 agent(s) moved to 1 server(s)" in summaries()[0], summaries()
    assert " 4 agent(s) moved" not in summaries()[0]
    for name in ("Writer0", "Writer1"):   # one line per agent, at DEBUG (a crash's agents move together)
        lines = [r for r in caplog.records
                 if r.getMessage().startswith(f"agent {name!r} (") and " moved " in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.DEBUG, [(r.levelname, r.getMessage()) for r in lines]


# -- 5: a class the server cannot load is a creation error, not a lost agent ---------------------------------
def test_a_class_the_server_cannot_load_is_a_creation_error_naming_the_agent(servers, tmp_path, monkeypatch):
    server = servers(capacity=4, allow_shipped_classes=False)     # started before local_agents exists anywhere
    (tmp_path / "local_agents.py").write_text(
        "from agentmesh import AgentBase, Msg\n\n\n"
        "class LocalAgent(AgentBase):\n"
        "    def reply(self, x=None):\n"
        "        return Msg(self.name, x.content)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "local_agents", raising=False)
    import local_agents

    agent = local_agents.LocalAgent("Writer").to_dist(host="127.0.0.1", port=server.port)
    with pytest.raises(errors.ClassNotFoundError) as caught:
        agent(Msg("user", "hi")).result(timeout=30)
    message = str(caught.value)
    assert isinstance(caught.value, errors.AgentCreationError) and not isinstance(caught.value, errors.AgentCallError)
    assert message.startswith(f"agent 'Writer' ({agent.agent_id}) could not be created: "), message
    assert "local_agents:LocalAgent is not hosted here" in message
    assert "lost with server" not in message and "could not be moved" not in message


# -- 5: errors name the agent by its name, with its id ---------------------------------------------------------
def test_errors_name_the_agent_by_name_and_id(servers):
    from sample_agents import Streamer

    server = servers(capacity=4)
    writer = Echo("Writer").to_dist(host="127.0.0.1", port=server.port)
    with pytest.raises(errors.AgentCallError) as raised:
        writer.boom("bad thing")
    assert str(raised.value).startswith(f"boom() on agent 'Writer' ({writer.agent_id}) raised ValueError: bad "
                                        f"thing"), str(raised.value)
    assert f"on agent {writer.agent_id} raised" not in str(raised.value)
    stream = Streamer("Reporter").to_dist(host="127.0.0.1", port=server.port).count(200, 0.02)
    assert next(stream) == 0
    os.kill(server.pid, signal.SIGKILL)
    with pytest.raises(errors.StreamBrokenError) as broken:
        list(stream)
    assert "the stream of count() on agent 'Reporter' (" in str(broken.value), str(broken.value)


# -- 5: a registry that refuses the server's credentials is not "not reachable" ---------------------------------
def test_a_server_without_the_etcd_password_says_the_registry_refused_it(dev_registry, procs):
    env = {"AGENTMESH_REGISTRY": dev_registry.url, "AGENTMESH_TOKEN_FILE": str(dev_registry.token_file),
           "AGENTMESH_ETCD_PASSWORD_FILE": ""}            # the password file is missing
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server"], stderr=subprocess.PIPE, text=True, env=env)
    err = read_until(proc, "listening on")
    err += stop(proc)
    assert "refused authentication" in err and "no password was given for user 'root'" in err, err
    assert "AGENTMESH_ETCD_PASSWORD_FILE" in err and err.count("refused authentication") == 1, err
    assert "not reachable" not in err, err


# -- 7: the server's start-up line names its metrics port ------------------------------------------------------
def test_the_start_up_line_names_the_metrics_port(procs):
    import urllib.request

    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", "--metrics-port", "0"], stderr=subprocess.PIPE, text=True)
    line = read_until(proc, "listening on").splitlines()[-1]
    assert ", /metrics on port " in line and not line.endswith("capacity 1000000"), line
    with urllib.request.urlopen(f"http://127.0.0.1:{int(line.rsplit(' ', 1)[1])}/metrics", timeout=10) as reply:
        assert b"agentmesh_agents" in reply.read()
    stop(proc)


# -- 5: gRPC's C core keeps its INFO lines to itself unless asked ------------------------------------------------
def test_grpc_core_info_lines_stay_out_of_a_server_log_unless_the_user_asks_for_them(procs, certs):
    def handshake_log(**env: str) -> str:
        proc = procs([PYTHON, "-m", "agentmesh.cli", "server", "--tls-cert", certs["server.crt"], "--tls-key",
                      certs["server.key"], "--tls-ca", certs["ca.crt"], "--token", MESH_TOKEN],
                     stderr=subprocess.PIPE, text=True, env=env)
        port = int(read_until(proc, "listening on").split("listening on 127.0.0.1:")[1].split(" ")[0])
        assert health(port, None) == "UNAVAILABLE"      # a plaintext client: the server's TLS handshake fails
        return stop(proc)

    quiet = handshake_log()
    assert "ssl_transport_security" not in quiet and "Handshake failed" not in quiet, quiet
    asked = handshake_log(GRPC_VERBOSITY="INFO")       # a value the user set is respected
    assert "ssl_transport_security.cc" in asked and "Handshake failed" in asked, asked


# -- 6: a TLS client without the certificate a mutual-TLS server requires is told so ------------------------------
def test_a_tls_client_without_a_certificate_is_told_the_server_may_require_one(servers, tls_settings, certs):
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=None, tls_key=None)
    mutual = tls_server(servers, certs, mutual=True)
    with pytest.raises(errors.ServerUnavailableError) as caught:
        Echo("E").to_dist(host="127.0.0.1", port=mutual.port)
    message = str(caught.value)
    assert f"agent server 127.0.0.1:{mutual.port} is unreachable" in message, message
    assert "may require a client certificate (mutual TLS), and this client has none" in message, message
    assert "tls_cert and tls_key" in message and "does one side use TLS and the other not" not in message
    tls_settings(tls_ca=None)                      # a plaintext client meeting the same server is told that
    with pytest.raises(errors.ServerUnavailableError) as caught:
        Echo("E").to_dist(host="127.0.0.1", port=mutual.port)
    assert "this client dials in plaintext: if the server uses TLS" in str(caught.value), str(caught.value)


# -- 6: a server refuses a certificate that cannot serve, at start ---------------------------------------------
def test_the_server_command_refuses_a_client_certificate_before_it_listens(certs):
    out = cli("server", "--tls-cert", certs["client.crt"], "--tls-key", certs["client.key"], "--tls-ca", certs["ca.crt"])
    assert out.returncode != 0 and "listening" not in out.stderr, out.stderr
    assert out.stderr.startswith("agentmesh server: certificate ") and "cannot serve: it is not a server " \
        "certificate (its extendedKeyUsage lacks serverAuth" in out.stderr, out.stderr


# -- 6: a command's prefix is said once --------------------------------------------------------------------------
def test_an_error_of_the_server_command_carries_its_prefix_once(certs):
    out = cli("server", "--tls-cert", certs["server.crt"], "--tls-key", certs["server.key"])   # no CA for its calls
    assert out.returncode != 0 and out.stderr.startswith("agentmesh server: its own calls"), out.stderr
    assert out.stderr.count("agentmesh server:") == 1, out.stderr


# -- 6: the wrong token is said, and fails the listing -----------------------------------------------------------
def test_listing_with_the_wrong_token_fails_saying_the_token_is_probably_wrong(mesh, namespace, servers):
    s = servers(capacity=4, registry=mesh.url, namespace=namespace)
    Echo("Writer").to_dist(host="127.0.0.1", port=s.port).ping()
    wait_until(lambda: registered(mesh.url, namespace, 1))
    wrong = "wrong-Qp4Lm8Xz2Vc6Bn1Hj5Kd9Fs3Ga7We0Ty"
    for command, what in (("servers", "server"), ("agents", "agent")):
        out = cli(command, "--registry", mesh.url, "--namespace", namespace, AGENTMESH_TOKEN=wrong)
        assert out.returncode != 0, (out.stdout, out.stderr)
        assert (f"agentmesh {command}: none of the 1 {what} record(s) in namespace {namespace!r} verifies with the "
                f"token given: it is probably not the servers' token") in out.stderr, out.stderr
        assert f"0 {what}(s)" not in out.stdout, out.stdout
    assert cli("servers", "--registry", mesh.url, "--namespace", namespace).returncode == 0


# -- 6: HEALTH of a TLS server says what the listing lacks; servers has the TLS options --------------------------
def test_servers_tells_why_a_tls_server_looks_unavailable_and_takes_tls_options(etcd, namespace, servers,
                                                                                 tls_settings, certs):
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=None, tls_key=None)   # the CA its own calls verify peers with
    secure = tls_server(servers, certs, registry=etcd.url, namespace=namespace)
    wait_until(lambda: registered(etcd.url, namespace, 1))
    plain = cli("servers", "--json", "--registry", etcd.url, "--namespace", namespace, AGENTMESH_TLS_CA="")
    assert plain.returncode == 0, plain.stderr
    health = {r["server_id"]: r["health"] for r in json.loads(plain.stdout)}
    assert health == {secure.server_id: "UNAVAILABLE (TLS? set --tls-ca or AGENTMESH_TLS_CA)"}, health
    tls = cli("servers", "--json", "--registry", etcd.url, "--namespace", namespace, "--tls-ca", certs["ca.crt"])
    assert [r["health"] for r in json.loads(tls.stdout)] == ["SERVING"], tls.stderr
    assert "--tls-ca PEM" in cli("servers", "--help").stdout


# -- 7: the CLI ----------------------------------------------------------------------------------------------------
def test_a_listing_whose_reader_goes_away_ends_without_a_traceback(mesh, namespace, servers, procs):
    s = servers(capacity=4, registry=mesh.url, namespace=namespace)
    Echo("Writer").to_dist(host="127.0.0.1", port=s.port).ping()
    for extra in ((), ("--json",)):          # agentmesh agents | head, with the reader gone before the first line
        proc = procs([PYTHON, "-m", "agentmesh.cli", "agents", "--registry", mesh.url, "--namespace", namespace,
                      *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     env={"AGENTMESH_TOKEN": MESH_TOKEN})
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 128 + signal.SIGPIPE, err
        assert err == "", err                # was: a BrokenPipeError traceback


def test_a_registry_url_without_a_user_for_its_password_is_one_line_not_a_traceback(etcd, tmp_path):
    password = tmp_path / "password"
    password.write_text("secret\n")
    password.chmod(0o600)
    out = cli("servers", "--registry", etcd.url, AGENTMESH_ETCD_PASSWORD_FILE=str(password))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"agentmesh servers: an etcd password but no user for {etcd.url}: name the user in the registry URL "
        f"(etcd://USER@{etcd.url.split('://')[1]}) or drop the password (AGENTMESH_ETCD_PASSWORD_FILE)"]


def test_top_shows_whole_headers_and_addresses_however_narrow_its_output(mesh, namespace, servers):
    long_host = "agent-server-17.eu-west-1.compute.internal.example.com"
    s = servers(capacity=4, registry=mesh.url, namespace=namespace, metrics_port=0, advertise_host=long_host)
    wait_until(lambda: registered(mesh.url, namespace, 1))
    out = cli("top", "--once", "--interval", "0.1", "--registry", mesh.url, "--namespace", namespace)
    assert out.returncode == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if "SERVER" in line)
    for name in ("SERVER", "ADDRESS", "STATUS", "AGENTS", "CALLS/S", "ERR/S", "INFLIGHT", "QUEUED", "SESSIONS",
                 "MOVED IN"):
        assert f" {name} " in header, header
    assert f"{long_host}:{s.port}" in out.stdout and s.server_id in out.stdout, out.stdout
    assert "…" not in out.stdout, out.stdout      # was: every header and the address cut at 80 columns


def test_the_help_says_what_namespace_label_and_the_token_file_are():
    server_help = cli("server", "--help").stdout
    assert "--label KEY=VALUE     a label of this server in the registry" in server_help, server_help
    for command in ("servers", "agents", "top"):
        text = " ".join(cli(command, "--help").stdout.split())
        assert "--namespace NAMESPACE the namespace of servers and agents" in text, text
        assert "Needs the namespace token the servers were given (AGENTMESH_TOKEN_FILE, else AGENTMESH_TOKEN)" in text


def test_a_class_that_is_not_an_agent_class_is_refused_before_the_server_listens():
    out = cli("server", "--agent-class", "collections:OrderedDict")
    assert out.returncode != 0 and "listening" not in out.stderr, out.stderr
    assert "--agent-class collections:OrderedDict is not an agent class: give a subclass of agentmesh.AgentBase" \
        in out.stderr, out.stderr


def test_agents_filters_by_server_class_and_name(mesh, namespace, servers):
    from sample_agents import Sleeper

    first, second = (servers(capacity=8, registry=mesh.url, namespace=namespace) for _ in range(2))
    writers = [Echo(f"Writer{i}").to_dist(host="127.0.0.1", port=first.port) for i in range(2)]
    reader = Echo("Reader").to_dist(host="127.0.0.1", port=second.port)
    sleeper = Sleeper("Writer9", 0.0).to_dist(host="127.0.0.1", port=second.port)
    for agent in (*writers, reader, sleeper):
        agent._check_created()

    def listed(*filters: str) -> set[str]:
        out = cli("agents", "--json", "--registry", mesh.url, "--namespace", namespace, *filters)
        assert out.returncode == 0, out.stderr
        return {r["name"] for r in json.loads(out.stdout)}

    wait_until(lambda: len(listed()) == 4)
    assert listed("--server", first.server_id) == {"Writer0", "Writer1"}
    assert listed("--class", "Echo") == {"Writer0", "Writer1", "Reader"}
    assert listed("--class", "sample_agents:Sleeper") == {"Writer9"}
    assert listed("--name", "Writer*", "--server", second.server_id) == {"Writer9"}
    table = cli("agents", "--registry", mesh.url, "--namespace", namespace, "--name", "Reader")
    assert table.stdout.splitlines()[-1].startswith("1 of 4 agent(s) in namespace"), table.stdout
