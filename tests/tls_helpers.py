"""Helpers shared by test_tls.py and test_tls_identity.py: a local CA, TLS servers, raw health checks.

Certificates come from scripts/make-local-ca (openssl). Every test that
changes TLS settings does so in a runtime of its own (``tls_settings``);
test modules import the fixtures by name.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from concurrent import futures
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh import RpcAgentServerLauncher
from agentmesh.testing import fresh_runtime
from conftest import ROOT

TOKEN = "tls-Rx3Kq8Zn1Wv6Tb9Ym4Uc7Jh2Lp5Gf0Da"


def make_ca(folder: Path) -> dict[str, str]:
    """Run scripts/make-local-ca into folder: the paths of what it made, by file name."""
    out = subprocess.run([os.path.join(ROOT, "scripts", "make-local-ca"), str(folder)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--tls-client-ca" in out.stdout and "AGENTMESH_TLS_CA" in out.stdout
    names = ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key")
    return {name: str(folder / name) for name in names}


def issue(certs: dict[str, str], folder: Path, name: str, extensions: str, key: str = "client.key") -> str:
    """A certificate for key (a file of certs) signed by that CA, with these openssl extension lines."""
    ext, csr, crt = folder / f"{name}.ext", folder / f"{name}.csr", folder / f"{name}.crt"
    ext.write_text(extensions)
    for args in (["req", "-new", "-key", certs[key], "-subj", f"/O=agentmesh/CN={name}", "-out", str(csr)],
                 ["x509", "-req", "-in", str(csr), "-CA", certs["ca.crt"], "-CAkey", certs["ca.key"],
                  "-CAcreateserial", "-CAserial", str(folder / "ca.srl"), "-days", "2",
                  "-extfile", str(ext), "-out", str(crt)]):
        out = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    return str(crt)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    return make_ca(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory) -> dict[str, str]:
    """A second, unrelated CA: its certificates must not be accepted."""
    return make_ca(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
def tls_settings(servers):
    """tls_settings(tls_ca=..., ...) sets the settings of a runtime of the test's own (the default meanwhile).

    Depends on ``servers`` so it is torn down first: the runtime closes (its
    sessions, agents and child servers) before the servers drain.
    ``tls_settings.runtime`` is that runtime.
    """
    with fresh_runtime() as runtime:
        def configure(**values: str | bool | None) -> None:
            runtime.configure(**values)

        configure.runtime = runtime
        yield configure


def tls_server(servers, certs, mutual: bool = False, **kwargs) -> RpcAgentServerLauncher:
    """A server process serving TLS with server.crt (mutual: requiring client certificates from ca.crt)."""
    kwargs.setdefault("tls_cert", certs["server.crt"])
    kwargs.setdefault("tls_key", certs["server.key"])
    return servers(capacity=16, tls_client_ca=certs["ca.crt"] if mutual else None, **kwargs)


def health(port: int, credentials: grpc.ChannelCredentials | None) -> str:
    """The health of 127.0.0.1:port over a raw channel (plaintext without credentials), or the error code."""
    address = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def raw_tls_server(cert: str, key: str) -> Iterator[int]:
    """A plain gRPC server in this process (health only, no agentmesh) serving TLS with cert and key: an
    impostor with a certificate agentmesh's own servers refuse to serve with. Yields its port; stopped after."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(grpc_health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(read(key), read(cert))]))
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()
