"""TLS and mutual TLS for agent servers, proxies, server-to-server calls, the CLI and etcd.

Certificates come from scripts/make-local-ca (openssl). Every test that
changes TLS settings does so in a runtime of its own (tls_settings).
Who may serve, the pinned CA and plaintext on the network: test_tls_identity.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import grpc
import pytest

import agentmesh
from agentmesh import Msg, RpcAgentServerLauncher
from agentmesh._config import Settings
from agentmesh._tls import ServerTLS
from agentmesh.errors import ServerUnavailableError
from agentmesh.server.launcher import check_exposure
from conftest import MESH_TOKEN, PYTHON, ROOT, wait_until
from sample_agents import Echo
from tls_helpers import (  # noqa: F401 - certs, other_certs and tls_settings are fixtures
    TOKEN, certs, health, other_certs, read, tls_server, tls_settings,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


# -- TLS -----------------------------------------------------------------------------------
def test_tls_server_and_proxy_end_to_end(servers, tls_settings, certs):
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=None, tls_key=None)
    first, second = tls_server(servers, certs), tls_server(servers, certs)
    a = Echo("A").to_dist(host="127.0.0.1", port=first.port)
    b = Echo("B").to_dist(host="127.0.0.1", port=second.port)
    assert a.ping("over tls") == "over tls"
    # A placeholder from one TLS server handed to an agent on the other: server-to-server over TLS.
    pending = a.reply(Msg("u", "hi"))
    assert b.reply(pending).content == {"count": 1, "got": {"count": 1, "got": "hi"}}
    assert a.get_count() == 1 and b.get_count() == 1
    # Health stays open to anyone who speaks TLS, and is closed to plaintext.
    assert health(first.port, grpc.ssl_channel_credentials(read(certs["ca.crt"]))) == "SERVING"
    assert health(first.port, None) == "UNAVAILABLE"


def test_in_process_tls_server(tls_settings, certs):
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=None, tls_key=None)
    launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=4, tls_cert=certs["server.crt"],
                                      tls_key=certs["server.key"])
    launcher.launch(in_subprocess=False)
    try:
        agent = Echo("E").to_dist(host="127.0.0.1", port=launcher.port)
        assert agent.reply(Msg("u", "in")).content == {"count": 1, "got": "in"}
        assert health(launcher.port, None) == "UNAVAILABLE"
        del agent
    finally:
        launcher.shutdown()


def test_plaintext_client_to_tls_server_fails_clearly(servers, tls_settings, certs):
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=None, tls_key=None)
    secure = tls_server(servers, certs)            # its own calls verify peers with the CA
    tls_settings(tls_ca=None)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError) as info:
        Echo("E").to_dist(host="127.0.0.1", port=secure.port)
    assert time.monotonic() - start < 5
    assert f"127.0.0.1:{secure.port}" in str(info.value) and "unreachable" in str(info.value)

    # And the other way round: a TLS client to a plaintext server.
    plain = servers(capacity=4, tls_cert="")
    tls_settings(tls_ca=certs["ca.crt"])
    with pytest.raises(ServerUnavailableError) as info:
        Echo("E").to_dist(host="127.0.0.1", port=plain.port)
    assert f"127.0.0.1:{plain.port}" in str(info.value)


def test_a_certificate_from_another_ca_is_refused(servers, tls_settings, certs, other_certs):
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=None, tls_key=None)
    secure = tls_server(servers, certs)
    tls_settings(tls_ca=other_certs["ca.crt"])
    with pytest.raises(ServerUnavailableError):
        Echo("E").to_dist(host="127.0.0.1", port=secure.port)


# -- mutual TLS --------------------------------------------------------------------------------
def test_mutual_tls_requires_a_client_certificate(servers, tls_settings, certs, other_certs):
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=None, tls_key=None)
    first = tls_server(servers, certs, mutual=True)
    second = tls_server(servers, certs, mutual=True)

    with pytest.raises(ServerUnavailableError):                      # no client certificate
        Echo("E").to_dist(host="127.0.0.1", port=first.port)
    tls_settings(tls_cert=other_certs["client.crt"], tls_key=other_certs["client.key"])
    with pytest.raises(ServerUnavailableError):                      # one from another CA
        Echo("E").to_dist(host="127.0.0.1", port=first.port)
    assert health(first.port, grpc.ssl_channel_credentials(read(certs["ca.crt"]))) == "UNAVAILABLE"

    tls_settings(tls_cert=certs["client.crt"], tls_key=certs["client.key"])
    a = Echo("A").to_dist(host="127.0.0.1", port=first.port)
    b = Echo("B").to_dist(host="127.0.0.1", port=second.port)
    assert a.ping(1) == 1
    # Server-to-server under mTLS: the second server fetches the placeholder with its own certificate.
    assert b.reply(a.reply(Msg("u", "m"))).content == {"count": 1, "got": {"count": 1, "got": "m"}}
    creds = grpc.ssl_channel_credentials(read(certs["ca.crt"]), read(certs["client.key"]),
                                         read(certs["client.crt"]))
    assert health(first.port, creds) == "SERVING"


def test_mutual_tls_with_a_token(servers, tls_settings, certs):
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=certs["client.crt"], tls_key=certs["client.key"],
                 token=TOKEN)
    secure = tls_server(servers, certs, mutual=True, token=TOKEN)
    agent = Echo("E").to_dist(host="127.0.0.1", port=secure.port)
    assert agent.reply(Msg("u", 1)).content["count"] == 1
    tls_settings(token=None)         # a fresh connection without the token: refused
    secure2 = tls_server(servers, certs, mutual=True, token=TOKEN)
    with pytest.raises(agentmesh.errors.AuthenticationError, match="did not prove it holds the token"):
        Echo("E").to_dist(host="127.0.0.1", port=secure2.port)


def test_child_servers_of_a_process_with_a_client_certificate(tls_settings, certs, servers):
    """Children listen in plaintext on loopback (a client certificate cannot serve), reach each other in
    plaintext through the roster, and reach TLS servers with the process's CA and client certificate."""
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=certs["client.crt"], tls_key=certs["client.key"])
    children = tls_settings.runtime.children
    a, b = Echo("A").to_dist(), Echo("B").to_dist()
    assert children.is_plaintext(a.server) and not children.is_plaintext("127.0.0.1:1")
    assert b.reply(a.reply(Msg("u", "c"))).content == {"count": 1, "got": {"count": 1, "got": "c"}}
    assert health(int(a.server.rsplit(":", 1)[1]), None) == "SERVING"      # plaintext, on loopback
    remote = tls_server(servers, certs, mutual=True)
    r = Echo("R").to_dist(host="127.0.0.1", port=remote.port)
    # A placeholder from the mTLS server, fetched by a child with the process's client certificate.
    assert a.reply(r.reply(Msg("u", "m"))).content == {"count": 2, "got": {"count": 1, "got": "m"}}


def test_a_process_with_only_a_ca_has_plaintext_children(tls_settings, certs, servers):
    """Children of a process without a certificate listen in plaintext too, and dial TLS servers with its CA."""
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=None, tls_key=None)
    children = tls_settings.runtime.children
    a, b = Echo("A").to_dist(), Echo("B").to_dist()
    assert children.is_plaintext(a.server) and not children.is_plaintext("127.0.0.1:1")
    assert b.reply(a.reply(Msg("u", "p"))).content == {"count": 1, "got": {"count": 1, "got": "p"}}
    secure = tls_server(servers, certs)               # remote servers still get TLS
    r = Echo("R").to_dist(host="127.0.0.1", port=secure.port)
    assert r.ping("r") == "r"
    assert a.reply(r.reply(Msg("u", "t"))).content == {"count": 2, "got": {"count": 1, "got": "t"}}


# -- exposure ---------------------------------------------------------------------------------
def test_exposure_rules():
    check_exposure("127.0.0.1", None, False, False)                          # loopback: fine
    check_exposure("::1", TOKEN, False, False)
    check_exposure("0.0.0.0", None, True, False, tls_client_auth=True)      # mutual TLS
    check_exposure("0.0.0.0", TOKEN, True, False)                             # TLS + token
    with pytest.raises(ValueError, match="on 0.0.0.0 without TLS: the token and every call"):
        check_exposure("0.0.0.0", TOKEN, False, False)                        # a token alone: plaintext
    with pytest.raises(ValueError, match="without a token or mutual TLS, and without TLS"):
        check_exposure("0.0.0.0", None, False, False)
    with pytest.raises(ValueError, match="TLS but neither a token nor a client CA"):
        check_exposure("0.0.0.0", None, True, False)
    check_exposure("0.0.0.0", None, True, True)                               # --insecure: a warning
    check_exposure("10.1.2.3", TOKEN, False, True)


def test_wildcard_address_with_mutual_tls_and_no_token_starts(servers, tls_settings, certs):
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=certs["client.crt"], tls_key=certs["client.key"],
                 token=None)
    exposed = servers(host="0.0.0.0", capacity=4, tls_cert=certs["server.crt"], tls_key=certs["server.key"],
                      tls_client_ca=certs["ca.crt"])
    assert Echo("E").to_dist(host="127.0.0.1", port=exposed.port).ping("mtls") == "mtls"

    for kwargs, words in (({}, "without TLS"),
                          ({"tls_cert": certs["server.crt"], "tls_key": certs["server.key"]},
                           "neither a token nor a client CA")):
        launcher = RpcAgentServerLauncher(host="0.0.0.0", capacity=4, **{"tls_cert": "", **kwargs})
        with pytest.raises(ValueError, match=words):
            launcher.launch(in_subprocess=True)
        assert launcher._process is None


def test_bad_tls_files_are_refused_clearly(tmp_path, certs, other_certs, tls_settings):
    with pytest.raises(ValueError, match="does not belong to the certificate"):
        ServerTLS.from_options(certs["server.crt"], other_certs["server.key"])
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(ValueError, match="not a PEM file"):
        ServerTLS.from_options(str(not_pem), certs["server.key"])
    with pytest.raises(ValueError, match="cannot read"):
        RpcAgentServerLauncher(tls_cert=str(tmp_path / "missing.crt"), tls_key=certs["server.key"])
    with pytest.raises(ValueError, match="both"):
        RpcAgentServerLauncher(tls_cert=certs["server.crt"], tls_key="")
    with pytest.raises(ValueError, match="needs the server's own certificate"):
        ServerTLS.from_options(None, None, certs["ca.crt"])
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        agentmesh.init(tls_cert=certs["client.crt"], tls_key=None)
    with pytest.raises(ValueError, match="cannot read"):
        agentmesh.init(tls_ca=str(tmp_path / "missing-ca.crt"))
    with pytest.raises(ValueError, match=r"needs tls_ca \(AGENTMESH_TLS_CA\)"):    # a certificate, no CA
        agentmesh.init(tls_ca=None, tls_cert=certs["client.crt"], tls_key=certs["client.key"])
    settings = tls_settings.runtime.settings
    assert settings.tls_ca is None or os.path.exists(settings.tls_ca)


def test_settings_from_environment(monkeypatch, certs):
    names = {"AGENTMESH_TLS_CA": "tls_ca", "AGENTMESH_TLS_CERT": "tls_cert", "AGENTMESH_TLS_KEY": "tls_key",
             "AGENTMESH_ETCD_CA": "etcd_ca", "AGENTMESH_ETCD_CERT": "etcd_cert",
             "AGENTMESH_ETCD_KEY": "etcd_key"}
    for env, _ in names.items():
        monkeypatch.setenv(env, f"/pki/{env.lower()}.pem")
    from_env = Settings.from_env()
    for env, field in names.items():
        assert getattr(from_env, field) == f"/pki/{env.lower()}.pem"
    assert from_env.insecure is False
    for value, insecure in (("1", True), ("true", True), ("YES", True), ("0", False), ("no", False)):
        monkeypatch.setenv("AGENTMESH_INSECURE", value)
        assert Settings.from_env().insecure is insecure
    monkeypatch.setenv("AGENTMESH_INSECURE", "maybe")
    with pytest.raises(ValueError, match="AGENTMESH_INSECURE='maybe' is neither on"):
        Settings.from_env()
    settings = Settings(etcd_ca=certs["ca.crt"], etcd_cert=certs["client.crt"], etcd_key=certs["client.key"])
    assert settings.etcd_options() == {"ca_cert": certs["ca.crt"], "cert": certs["client.crt"],
                                       "key": certs["client.key"]}
    with pytest.raises(ValueError, match="both etcd_cert and etcd_key"):
        settings.replace(etcd_key=None)


# -- the command line ----------------------------------------------------------------------------
def _cli_server(procs, *args: str, env: dict[str, str] | None = None):
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", *args], stderr=subprocess.PIPE, text=True,
                 env=env or {})
    deadline = time.monotonic() + 20
    line = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"listening on (\S+):(\d+) \((.*)\)", line)
        if match:
            return proc, int(match.group(2)), match.group(3)
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"agentmesh server did not start: {line!r}, code {proc.poll()}")


def test_cli_server_with_mutual_tls(procs, tls_settings, certs):
    proc, port, mode = _cli_server(procs, "--host", "0.0.0.0", "--port", "0", "--tls-cert", certs["server.crt"],
                                   "--tls-key", certs["server.key"], "--tls-client-ca", certs["ca.crt"])
    assert mode == "mutual TLS"
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=certs["client.crt"], tls_key=certs["client.key"], token=None)
    assert Echo("E").to_dist(host="127.0.0.1", port=port).ping("cli") == "cli"

    # From the environment: AGENTMESH_TLS_CERT/KEY make `agentmesh server` speak TLS, AGENTMESH_TLS_CA is
    # what its own calls verify peers with; without a CA it refuses to start.
    tls_env = {"AGENTMESH_TLS_CERT": certs["server.crt"], "AGENTMESH_TLS_KEY": certs["server.key"]}
    no_ca = procs([PYTHON, "-m", "agentmesh.cli", "server", "--port", "0"], stderr=subprocess.PIPE, text=True,
                  env={**tls_env, "AGENTMESH_TLS_CA": ""})
    _, err = no_ca.communicate(timeout=20)
    assert no_ca.returncode != 0 and "tls_ca (--tls-ca, AGENTMESH_TLS_CA)" in err, err
    _, env_port, env_mode = _cli_server(procs, "--port", "0", env={**tls_env, "AGENTMESH_TLS_CA": certs["ca.crt"]})
    assert env_mode == "TLS"
    assert Echo("E").to_dist(host="127.0.0.1", port=env_port).ping("env") == "env"

    refused = procs([PYTHON, "-m", "agentmesh.cli", "server", "--host", "0.0.0.0", "--port", "0",
                     "--tls-cert", certs["server.crt"], "--tls-key", certs["server.key"]],
                    stderr=subprocess.PIPE, text=True)
    _, err = refused.communicate(timeout=20)
    assert refused.returncode != 0 and "neither a token nor a client CA" in err
    bad = procs([PYTHON, "-m", "agentmesh.cli", "server", "--tls-cert", certs["server.crt"]],
                stderr=subprocess.PIPE, text=True)
    _, err = bad.communicate(timeout=20)
    assert bad.returncode != 0 and "both the server certificate and its key" in err


# -- etcd over mutual TLS -------------------------------------------------------------------------
def test_registration_and_cli_over_etcd_mutual_tls(servers, tls_settings, certs, tmp_path, namespace):
    from agentmesh.discovery import keys
    from agentmesh.etcd import EtcdClient
    from agentmesh.testing import EtcdProcess

    etcd = EtcdProcess(name="agentmesh-tls-etcd", cert_file=certs["server.crt"], key_file=certs["server.key"],
                       ca_file=certs["ca.crt"], client_cert_auth=True)
    etcd.start(data_dir=str(tmp_path / "etcd"))
    try:
        assert etcd.url.startswith("etcds://")
        tls_settings(etcd_ca=certs["ca.crt"], etcd_cert=certs["client.crt"], etcd_key=certs["client.key"],
                     tls_ca=certs["ca.crt"], tls_cert=certs["client.crt"], tls_key=certs["client.key"])
        server = tls_server(servers, certs, mutual=True, registry=etcd.url, namespace=namespace)

        async def records() -> dict:
            client = EtcdClient.from_url(etcd.url, **tls_settings.runtime.settings.etcd_options())
            try:
                kvs, _ = await client.get_prefix(keys.servers_prefix(namespace))
                return {json.loads(kv.value)["server_id"]: json.loads(kv.value) for kv in kvs}
            finally:
                await client.close()

        wait_until(lambda: server.server_id in tls_settings.runtime.run(records()), timeout=10, interval=0.1)

        env = {"AGENTMESH_ETCD_CA": certs["ca.crt"], "AGENTMESH_ETCD_CERT": certs["client.crt"],
               "AGENTMESH_ETCD_KEY": certs["client.key"], "AGENTMESH_TLS_CA": certs["ca.crt"],
               "AGENTMESH_TLS_CERT": certs["client.crt"], "AGENTMESH_TLS_KEY": certs["client.key"],
               "AGENTMESH_TOKEN": MESH_TOKEN}
        out = subprocess.run([PYTHON, "-m", "agentmesh.cli", "servers", "--registry", etcd.url,
                              "--namespace", namespace], capture_output=True, text=True, timeout=30,
                             cwd=ROOT, env={**os.environ, **env})
        assert out.returncode == 0, out.stderr
        row = next(line.split() for line in out.stdout.splitlines() if line.startswith(server.server_id))
        assert row[5] == "SERVING"
        without = subprocess.run([PYTHON, "-m", "agentmesh.cli", "servers", "--registry", etcd.url,
                                  "--namespace", namespace], capture_output=True, text=True, timeout=30,
                                 cwd=ROOT, env={**{k: v for k, v in os.environ.items() if not k.startswith(
                                     "AGENTMESH_ETCD_")}, "AGENTMESH_TOKEN": MESH_TOKEN})
        assert without.returncode != 0 and "token" not in without.stderr
    finally:
        etcd.stop()
