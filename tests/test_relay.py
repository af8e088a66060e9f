"""A relay without the token between a client and a real server: nothing it forwards, replays or answers works.

The relay (tests/relay_server.py, a real process) listens where the client
dials and forwards every pre-session RPC verbatim to a real server of the
namespace (or with the claimed address rewritten to the real one); it replays
every metadata it sees at that server with a code-running class, and answers
the client's session itself with code-running pickles. Each test checks that
nothing ran anywhere, that the relay never saw a ticket, and that the client
got an agentmesh error naming the address.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from agentmesh import errors
from agentmesh.testing import wire as _wire
from conftest import MESH_TOKEN, PYTHON
from sample_agents import Echo
from tls_helpers import certs, other_certs, tls_server, tls_settings  # noqa: F401 - fixtures

RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay_server.py")


class RelayProcess:
    def __init__(self, port: int, log: str, client_marker: str, server_marker: str) -> None:
        self.port, self.log, self.client_marker, self.server_marker = port, log, client_marker, server_marker

    def entries(self) -> list[dict]:
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [json.loads(line) for line in f]

    def assert_gained_nothing(self) -> None:
        seen = self.entries()
        assert seen, "the client never dialled the relay: the test proves nothing"
        for entry in seen:
            assert all(key != _wire.MD_AUTH for key, _ in entry.get("metadata", ())), entry
            assert entry.get("outcome") in (None, "UNAUTHENTICATED"), entry
        assert not any(e.get("method", "").endswith("/Session") for e in seen), seen
        assert not os.path.exists(self.server_marker), "the relay's class ran on the real server"
        assert not os.path.exists(self.client_marker), "the relay's pickle ran in the client"


@pytest.fixture
def relay(procs, tmp_path):
    count = iter(range(100))

    def start(target: str, mode: str = "verbatim", tls: tuple[str, str, str] = ()) -> RelayProcess:
        n = next(count)
        paths = [str(tmp_path / f"relay-{n}.{suffix}") for suffix in ("log", "client-ran", "server-ran")]
        proc = procs([PYTHON, RELAY, target, mode, *paths, *tls], stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        assert line.startswith("READY "), f"relay did not start: {line!r}"
        return RelayProcess(int(line.split()[1]), *paths)

    return start


@pytest.mark.parametrize("mode", ["verbatim", "rewrite"])
def test_a_relay_without_the_token_runs_nothing_anywhere(servers, relay, runtime, mode):
    real = servers(capacity=8, token=MESH_TOKEN, namespace="default")
    middle = relay(real.address, mode)
    runtime.configure(token=MESH_TOKEN)
    with pytest.raises(errors.AuthenticationError) as caught:
        Echo("victim").to_dist(host="127.0.0.1", port=middle.port).ping(1)
    assert f"127.0.0.1:{middle.port}" in str(caught.value)
    middle.assert_gained_nothing()
    direct = Echo("fine").to_dist(host="127.0.0.1", port=real.port)   # the real server still serves
    assert direct.ping(2) == 2


@pytest.mark.parametrize("relay_tls", ["plaintext", "own certificate"])
def test_with_tls_the_certificate_check_stops_a_relay(servers, relay, certs, other_certs, tls_settings, relay_tls):
    tls_settings(tls_ca=certs["ca.crt"], token=MESH_TOKEN)
    real = tls_server(servers, certs, token=MESH_TOKEN)
    tls = () if relay_tls == "plaintext" else (other_certs["server.crt"], other_certs["server.key"], certs["ca.crt"])
    middle = relay(real.address, "rewrite", tls)
    with pytest.raises(errors.ServerUnavailableError) as caught:
        Echo("victim").to_dist(host="127.0.0.1", port=middle.port).ping(1)
    assert f"127.0.0.1:{middle.port}" in str(caught.value)
    assert not any(e.get("method", "").endswith("/Session") for e in middle.entries())
    assert all(key != _wire.MD_AUTH for e in middle.entries() for key, _ in e.get("metadata", ()))
    assert not os.path.exists(middle.server_marker) and not os.path.exists(middle.client_marker)
    assert Echo("fine").to_dist(host="127.0.0.1", port=real.port).ping(2) == 2


def test_a_server_answering_the_handshake_with_garbage_is_an_agentmesh_error(runtime):
    """A rogue whose handshake answer does not even parse: the client names the server and what it failed."""
    from concurrent import futures

    import grpc

    answers = iter([b"\xff\xff\xff not a protobuf", b"", b"\x0a\x03abc"])   # garbage, empty, a bare server id

    class Garbage(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(lambda body, ctx: next(answers))

    rogue = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
    rogue.add_generic_rpc_handlers((Garbage(),))
    port = rogue.add_insecure_port("127.0.0.1:0")
    rogue.start()
    try:
        for _ in range(3):
            with pytest.raises(errors.AuthenticationError) as caught:
                Echo("victim").to_dist(host="127.0.0.1", port=port).ping(1)
            assert f"127.0.0.1:{port}" in str(caught.value) and "nothing was sent to it" in str(caught.value)
    finally:
        rogue.stop(0)
