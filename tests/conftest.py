"""Fixtures: real agent servers in real processes on free ports, always stopped by PID."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable

import pytest

from agentmesh import RpcAgentServerLauncher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the namespace token of the tests' registry: servers registered by tests and the mesh fixture share it
MESH_TOKEN = "mesh-Tk7qW9zR2vX5bN8cL4hJ6fD3gS1aP0eYu"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll predicate until it is truthy; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def is_agent_server(pid: int) -> bool:
    """Whether pid is an agent server process: a fresh one (``-m agentmesh.server``) or a fork (named so)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"agentmesh.server" in f.read():
                return True
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip() == b"agentmesh-srv"
    except OSError:
        return False


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def servers():
    """Start agent servers in subprocesses: servers(capacity=..., ...) -> launcher."""
    started: list[RpcAgentServerLauncher] = []

    def start(**kwargs) -> RpcAgentServerLauncher:
        kwargs.setdefault("host", "127.0.0.1")
        if kwargs.get("registry"):       # registry records are signed with the namespace token
            kwargs.setdefault("token", MESH_TOKEN)
        launcher = RpcAgentServerLauncher(**kwargs)
        launcher.launch(in_subprocess=True)
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        try:
            launcher.shutdown()
        finally:
            kill_pid(launcher.pid)


@pytest.fixture
def server(servers):
    """One agent server with room for 64 agents."""
    return servers(capacity=64)


@pytest.fixture
def procs():
    """Popen helper for CLI and script processes; everything started is killed by PID at the end."""
    started: list[subprocess.Popen] = []

    def popen(args, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("cwd", ROOT)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
        env.update(kwargs.pop("env", {}))
        proc = subprocess.Popen(args, env=env, **kwargs)
        started.append(proc)
        return proc

    yield popen
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


PYTHON = sys.executable


def server_info(server, token: str | None = None, host: str = "127.0.0.1", namespace: str = "default"):
    """GetInfo of a server (a launcher, whose token and namespace are used, or a port) over a raw gRPC channel."""
    import grpc

    from agentmesh.testing import wire as _wire
    from agentmesh.v1 import agent_server_pb2 as pb
    from agentmesh.v1 import agent_server_pb2_grpc as pb_grpc

    if isinstance(server, RpcAgentServerLauncher):
        port, token, namespace = server.port, server.token, server.namespace
    else:
        port = server
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        return pb_grpc.AgentServerStub(channel).GetInfo(
            pb.InfoRequest(), metadata=_wire.authenticate(channel, token, namespace), timeout=5)


@pytest.fixture(scope="session")
def etcd():
    """A real single-node etcd from the binary the project installs, for the whole session."""
    from agentmesh.testing import EtcdProcess

    proc = EtcdProcess(name="agentmesh-test-etcd")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server of the tests' own (initdb in a temp dir, password auth, loopback), for the session."""
    from agentmesh.testing import PostgresProcess

    proc = PostgresProcess(name="agentmesh-test-postgres")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def dev_registry(tmp_path):
    """The development registry (etcd with auth on, as `agentmesh registry up` starts it), stopped by PID after."""
    from agentmesh.testing import start_dev_registry

    registry = start_dev_registry(tmp_path / "registry")
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def namespace(request):
    """A namespace of the test's own, so tests sharing one etcd never see each other's servers."""
    import uuid

    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def runtime():
    """This process's default runtime; whatever settings the test changes are restored afterwards."""
    from agentmesh.testing import settings_changed

    with settings_changed() as rt:
        yield rt


@pytest.fixture
def mesh(etcd, namespace, runtime):
    """This process placing through the test etcd in the test's namespace; reset afterwards."""
    runtime.configure(registry=etcd.url, namespace=namespace, token=MESH_TOKEN)
    yield etcd


def etcd_get_prefix(url: str, prefix: str) -> dict:
    """Read every key under prefix: {key: parsed JSON}."""
    import asyncio
    import json

    from agentmesh.etcd import EtcdClient

    async def read():
        client = EtcdClient.from_url(url)
        try:
            kvs, _ = await client.get_prefix(prefix)
            return {kv.key.decode(): json.loads(kv.value) for kv in kvs}
        finally:
            await client.close()

    return asyncio.run(read())
