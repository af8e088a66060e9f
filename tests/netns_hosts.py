"""Hosts of the netns test: network namespaces joined by veths, servers in them (tests/test_netns.py)."""

import ipaddress
import os
import queue
import re
import shutil
import subprocess
import threading
import uuid

import pytest

from agentmesh.v1 import agent_server_pb2 as pb
from conftest import PYTHON, ROOT, kill_pid, server_info


TOKEN = "netns-" + uuid.uuid4().hex + "-Kq7Zr"
SUBNETS = ipaddress.ip_network("10.231.0.0/16")   # private, and only ever on this test's veths
BLACKHOLE_METRIC = 4231


# -- the network ----------------------------------------------------------------------------------------

def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class VethUnavailable(Exception):
    """This machine cannot make veth pairs (no veth driver): the test skips."""


class Host:
    """A network namespace joined to the root namespace by one veth pair on a /30."""

    def __init__(self, tag: str, subnet: ipaddress.IPv4Network) -> None:
        pid = os.getpid()
        self.ns = f"agentmesh-netns-{pid}-{tag}"
        self.root_if = f"amr{pid}{tag}"      # at most 15 characters for pids up to 9 digits
        self.ns_if = f"amn{pid}{tag}"
        self.subnet = subnet
        hosts = list(subnet.hosts())
        self.root_ip, self.ns_ip = str(hosts[0]), str(hosts[1])
        self.made_ns = self.made_link = self.made_route = False

    def create(self) -> None:
        _ip("netns", "add", self.ns)
        self.made_ns = True
        made = _ip("link", "add", self.root_if, "type", "veth", "peer", "name", self.ns_if, check=False)
        if made.returncode != 0:
            raise VethUnavailable(f"`ip link add ... type veth` failed: {made.stderr.strip() or made.returncode}")
        self.made_link = True
        _ip("link", "set", self.ns_if, "netns", self.ns)
        _ip("addr", "add", f"{self.root_ip}/{self.subnet.prefixlen}", "dev", self.root_if)
        # Safety net first: with the veth down, this /30 goes nowhere rather than out of the machine.
        _ip("route", "add", "blackhole", str(self.subnet), "metric", str(BLACKHOLE_METRIC))
        self.made_route = True
        _ip("link", "set", self.root_if, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "addr", "add", f"{self.ns_ip}/{self.subnet.prefixlen}", "dev", self.ns_if)
        _ip("-n", self.ns, "link", "set", self.ns_if, "up")

    def cut(self, where: str) -> None:
        """Cut the host off: its own end of the link down ("host"), or the root's end ("root")."""
        self._link(where, "down")

    def reconnect(self, where: str) -> None:
        self._link(where, "up")

    def _link(self, where: str, state: str) -> None:
        if where == "host":
            _ip("-n", self.ns, "link", "set", self.ns_if, state)
        elif where == "root":
            _ip("link", "set", self.root_if, state)
        else:
            raise ValueError(where)

    def destroy(self) -> list[str]:
        """Remove what create() made; returns the errors (cleanup goes on past each)."""
        problems = []
        if self.made_link:   # deleting one end deletes its peer, wherever it is
            proc = _ip("link", "del", self.root_if, check=False)
            if proc.returncode and _ip("link", "show", self.root_if, check=False).returncode == 0:
                problems.append(f"link del {self.root_if}: {proc.stderr.strip()}")
        if self.made_ns:
            proc = _ip("netns", "del", self.ns, check=False)
            if proc.returncode:
                problems.append(f"netns del {self.ns}: {proc.stderr.strip()}")
        if self.made_route:  # last: the safety net stays while anything of ours could still send
            proc = _ip("route", "del", "blackhole", str(self.subnet), "metric", str(BLACKHOLE_METRIC),
                       check=False)
            if proc.returncode:
                problems.append(f"route del {self.subnet}: {proc.stderr.strip()}")
        return problems


def _free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """count /30s of 10.231.0.0/16 that no address or route on this machine overlaps (pid-based start)."""
    used = []
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        for match in re.finditer(r"\b(10\.231\.\d+\.\d+(?:/\d+)?)", _ip(*args, check=False).stdout):
            used.append(ipaddress.ip_network(match.group(1), strict=False))
    all_30s = SUBNETS.num_addresses // 4
    start = (os.getpid() * count) % all_30s
    chosen = []
    for i in range(all_30s):
        net = ipaddress.ip_network(
            (int(SUBNETS.network_address) + ((start + i) % all_30s) * 4, 30))
        if not any(net.overlaps(u) for u in used):
            chosen.append(net)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free /30 left in 10.231.0.0/16")


@pytest.fixture
def hosts():
    """Two namespaces ("hosts") wired to this one; skips when namespaces cannot be made here."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("network namespaces need root (this test runs as uid "
                    f"{os.geteuid() if hasattr(os, 'geteuid') else '?'})")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    probe = f"agentmesh-netns-{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` failed: {made.stderr.strip() or made.returncode}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    subnets = _free_subnets(2)
    made_hosts = [Host(tag, subnet) for tag, subnet in zip("ab", subnets)]
    try:
        for host in made_hosts:
            try:
                host.create()
            except VethUnavailable as exc:
                pytest.skip(str(exc))
        yield made_hosts
    finally:
        problems = [p for host in made_hosts for p in host.destroy()]
        assert not problems, f"network cleanup failed: {problems}"


# -- processes ----------------------------------------------------------------------------------------

class ServerProc:
    """An agent server started by the CLI inside a namespace; its stderr is collected by a thread."""

    def __init__(self, host: Host, etcd_url: str, namespace: str) -> None:
        self.host = host
        self.namespace = namespace
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
                   PYTHONUNBUFFERED="1")
        env.pop("AGENTMESH_TOKEN", None)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, PYTHON, "-m", "agentmesh.cli", "--log-level", "INFO",
             "server", "--host", host.ns_ip, "--port", "0", "--registry", etcd_url,
             "--namespace", namespace, "--capacity", "8", "--token", TOKEN, "--ttl", "2",
             "--insecure"],   # plaintext on a network address: these hosts exist only inside this machine
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = re.search(r"listening on (\S+):(\d+)", line)
            if match and self.port is None:
                self.port = int(match.group(2))
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> None:
        if not self._ready.wait(timeout) or self.port is None:
            raise AssertionError(f"server in {self.host.ns} did not start (exit {self.proc.poll()}):\n"
                                 + self.log())

    @property
    def address(self) -> str:
        return f"{self.host.ns_ip}:{self.port}"

    def info(self):
        return server_info(self.port, TOKEN, host=self.host.ns_ip, namespace=self.namespace)

    def log(self) -> str:
        return "\n".join(self.lines[-60:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill_pid(self.proc.pid)   # ip netns exec execs: this pid is the server itself
        self.proc.wait(timeout=10)


def raw_call(address: str, agent_id: str, method: str, epoch: int, namespace: str):
    """One call on a fresh session of our own, with an epoch we choose: the server's raw reply."""
    import grpc

    from agentmesh.testing import wire as _wire
    from agentmesh.v1 import agent_server_pb2_grpc as pb_grpc

    call_id = f"netns-raw-{uuid.uuid4().hex}"
    done = queue.Queue()

    def frames():
        yield pb.ClientFrame(calls=[pb.Call(call_id=call_id, agent_id=agent_id, method=method,
                                            payload=b"", epoch=epoch)])
        done.get(timeout=10)      # keep our half open until the reply came

    with grpc.insecure_channel(address) as channel:
        stream = pb_grpc.AgentServerStub(channel).Session(
            frames(), metadata=_wire.authenticate(channel, TOKEN, namespace), timeout=5)
        try:
            for frame in stream:
                for reply in frame.replies:
                    if reply.call_id == call_id:
                        return reply
        finally:
            done.put(None)
            stream.cancel()
    raise AssertionError(f"{address} ended the session without answering call {call_id}")
