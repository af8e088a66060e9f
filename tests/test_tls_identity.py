"""Who may serve, and over what: certificate purposes, the pinned CA, plaintext on the network.

A client certificate must not be able to pose as a server: make-local-ca gives
it clientAuth only and no names, and the client checks the server
certificate's extended key usage (gRPC's BoringSSL does; the tests below show
it, with a client-only certificate that does name 127.0.0.1).
"""
from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess

import pytest

from agentmesh import Msg, RpcAgentServerLauncher
from agentmesh._address import is_loopback
from agentmesh._client.dialing import Dialing
from agentmesh._tls import channel_credentials
from agentmesh.errors import ServerUnavailableError
from agentmesh.testing import fresh_runtime
from conftest import PYTHON
from sample_agents import Echo
from tls_helpers import TOKEN, certs, issue, raw_tls_server, tls_server, tls_settings  # noqa: F401 - fixtures

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

NAMES = "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
PLAIN = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"


# -- who may serve --------------------------------------------------------------------------------
def test_a_server_presenting_the_client_certificate_is_refused(tls_settings, certs):
    """By the server itself, at start; and by clients, when anyone else serves with it."""
    with pytest.raises(ValueError, match="cannot serve: it is not a server certificate"):
        RpcAgentServerLauncher(host="127.0.0.1", tls_cert=certs["client.crt"], tls_key=certs["client.key"],
                               tls_ca=certs["ca.crt"])
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=None, tls_key=None)
    with raw_tls_server(certs["client.crt"], certs["client.key"]) as port:
        with pytest.raises(ServerUnavailableError) as info:
            Echo("E").to_dist(host="127.0.0.1", port=port)
    assert f"127.0.0.1:{port}" in str(info.value)


def test_the_client_checks_the_server_certificate_purpose(servers, tls_settings, certs, tmp_path):
    """Same CA, same key, names 127.0.0.1: only the extended key usage differs, and decides."""
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=None, tls_key=None)
    client_only = issue(certs, tmp_path, "client-only", PLAIN + "extendedKeyUsage=clientAuth\n" + NAMES)
    for_serving = issue(certs, tmp_path, "for-serving", PLAIN + "extendedKeyUsage=serverAuth\n" + NAMES)
    with raw_tls_server(client_only, certs["client.key"]) as port:    # agentmesh's own server would not start
        with pytest.raises(ServerUnavailableError, match="unsupported certificate purpose") as info:
            Echo("E").to_dist(host="127.0.0.1", port=port)
    assert "not a server certificate" in str(info.value)     # and the hint says what that means
    accepted = tls_server(servers, certs, tls_cert=for_serving, tls_key=certs["client.key"])
    assert Echo("E").to_dist(host="127.0.0.1", port=accepted.port).ping("ok") == "ok"


# -- a pinned CA, never the system's roots ---------------------------------------------------------
def test_tls_without_a_ca_is_refused(monkeypatch, certs):
    with pytest.raises(ValueError, match=r"needs tls_ca \(AGENTMESH_TLS_CA\).*never trusts the system"):
        channel_credentials(None, certs["client.crt"], certs["client.key"])
    monkeypatch.delenv("AGENTMESH_TLS_CA", raising=False)
    monkeypatch.setenv("AGENTMESH_TLS_CERT", certs["client.crt"])
    monkeypatch.setenv("AGENTMESH_TLS_KEY", certs["client.key"])
    with pytest.raises(ValueError, match=r"tls_cert=.*client.crt\) needs tls_ca \(AGENTMESH_TLS_CA\)"):
        with fresh_runtime():
            pass


def test_a_tls_server_needs_a_ca_for_its_own_calls(servers, tls_settings, certs):
    """Without tls_ca a TLS server does not start; a mutual-TLS one verifies its peers with its client CA."""
    tls_settings(tls_ca=None, tls_cert=None, tls_key=None)
    launcher = RpcAgentServerLauncher(capacity=4, tls_cert=certs["server.crt"], tls_key=certs["server.key"])
    with pytest.raises(ValueError, match=r"tls_ca \(--tls-ca, AGENTMESH_TLS_CA\) or a client CA"):
        launcher.launch(in_subprocess=True)
    assert launcher._process is None
    first, second = tls_server(servers, certs, mutual=True), tls_server(servers, certs, mutual=True)
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=certs["client.crt"], tls_key=certs["client.key"])
    a = Echo("A").to_dist(host="127.0.0.1", port=first.port)
    b = Echo("B").to_dist(host="127.0.0.1", port=second.port)
    # second fetches a's placeholder over mTLS: server.crt as its client certificate, ca.crt (its client CA)
    assert b.reply(a.reply(Msg("u", "s2s"))).content == {"count": 1, "got": {"count": 1, "got": "s2s"}}


# -- plaintext on the network ----------------------------------------------------------------------
def test_dialing_a_network_address_in_plaintext_is_refused():
    plain = Dialing(token=TOKEN, max_message_size=1 << 20, connect_timeout=1.0)
    with pytest.raises(ValueError, match=r"refusing to dial agent server 10.255.0.1:7 in plaintext.*"
                                         r"tls_ca=.*AGENTMESH_INSECURE=1"):
        plain.channel("10.255.0.1:7")
    with pytest.raises(ValueError, match=r"\[fd00::1\]:7"):
        plain.channel("[fd00::1]:7")

    async def allowed() -> None:     # aio channels are made on an event loop
        insecure = Dialing(token=TOKEN, max_message_size=1 << 20, connect_timeout=1.0, insecure=True)
        channels = [plain.channel(loopback) for loopback in ("127.0.0.1:7", "127.8.9.10:7", "[::1]:7",
                                                             "localhost:7")]
        channels.append(insecure.channel("10.255.0.1:7"))
        for channel in channels:          # built, never connected
            await channel.close()

    asyncio.run(allowed())


def test_a_proxy_refuses_a_network_address_in_plaintext(tls_settings):
    tls_settings(tls_ca=None, tls_cert=None, tls_key=None, insecure=False)
    with pytest.raises(ValueError, match="refusing to dial agent server 10.255.0.1:7 in plaintext"):
        Echo("E").to_dist(host="10.255.0.1", port=7)


def test_a_server_refuses_a_network_address_without_tls(procs):
    with pytest.raises(ValueError, match="without TLS: the token and every call"):
        RpcAgentServerLauncher(host="0.0.0.0", token=TOKEN, tls_cert="").launch(in_subprocess=True)
    refused = procs([PYTHON, "-m", "agentmesh.cli", "server", "--host", "0.0.0.0", "--port", "0"],
                    stderr=subprocess.PIPE, text=True, env={"AGENTMESH_TOKEN": TOKEN})
    _, err = refused.communicate(timeout=20)
    assert refused.returncode != 0 and "without TLS" in err and "--insecure" in err, err


def _network_ip() -> str | None:
    """An address of this machine that is not loopback, or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))      # no packet is sent: this only picks a source address
            ip = probe.getsockname()[0]
    except OSError:
        return None
    return None if is_loopback(ip) else ip


def test_plaintext_on_the_network_with_insecure_on_both_ends(servers, tls_settings):
    ip = _network_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    exposed = servers(host=ip, capacity=4, token=TOKEN, tls_cert="", insecure=True)
    tls_settings(tls_ca=None, tls_cert=None, tls_key=None, token=TOKEN, insecure=False)
    with pytest.raises(ValueError, match=f"refusing to dial agent server {ip}:{exposed.port} in plaintext"):
        Echo("E").to_dist(host=ip, port=exposed.port)
    tls_settings(insecure=True)
    assert Echo("E").to_dist(host=ip, port=exposed.port).ping("plain") == "plain"
