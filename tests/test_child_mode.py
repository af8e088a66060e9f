"""Child mode: to_dist() with no host and no registry runs agents on child servers of this process."""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import pytest

from agentmesh import Msg
from agentmesh.testing import wire as _wire
from agentmesh.v1 import agent_server_pb2 as pb
from agentmesh.v1 import agent_server_pb2_grpc as pb_grpc
from conftest import PYTHON, is_agent_server, kill_pid, pid_alive, wait_until
from wire_helpers import ticket_made_with
from sample_agents import Echo

#: subprocesses get no registry and no shared token from the environment
CLEAN_ENV = {"AGENTMESH_REGISTRY": "", "AGENTMESH_TOKEN": ""}


@pytest.fixture(autouse=True)
def no_registry(runtime):
    runtime.configure(registry=None)


def child_agents(n: int, prefix: str = "c") -> list:
    agents = [Echo(f"{prefix}{i}").to_dist() for i in range(n)]
    assert all(a.server.startswith("127.0.0.1:") for a in agents), [a.server for a in agents]
    return agents


def _decode_address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) order."""
    raw = b"".join(bytes.fromhex(hex_addr[i:i + 8])[::-1] for i in range(0, len(hex_addr), 8))
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    address = ipaddress.IPv6Address(raw)
    return address.ipv4_mapped or address


def listening_sockets(port: int) -> list[tuple[ipaddress._BaseAddress, int]]:
    """(address, inode) of every TCP socket listening on port, IPv4 and IPv6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            hex_addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:     # 0A: LISTEN
                found.append((_decode_address(hex_addr), inode))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def test_child_servers_listen_on_loopback_only():
    agents = child_agents(3, "loop")
    ports = {int(a.server.rsplit(":", 1)[1]) for a in agents}
    pids = {a.pid() for a in agents}
    assert os.getpid() not in pids
    child_sockets = set().union(*(socket_inodes(pid) for pid in pids))
    for port in ports:
        sockets = listening_sockets(port)
        assert sockets, f"nothing listens on port {port}"
        for address, _ in sockets:
            assert address.is_loopback and str(address) == "127.0.0.1", (port, str(address))
        assert any(inode in child_sockets for _, inode in sockets), \
            f"the socket listening on {port} does not belong to a child server {pids}"


def test_child_server_requires_the_parents_token(runtime):
    agent = child_agents(1, "tok")[0]
    token = runtime.token
    assert token and len(token) >= 32
    channel = grpc.insecure_channel(agent.server)
    try:
        stub = pb_grpc.AgentServerStub(channel)
        namespace = runtime.settings.namespace
        for md, words in ((_wire.call_metadata(), "missing token"),
                          (_wire.call_metadata(ticket_made_with(channel, "x" + token, namespace)), "wrong token")):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetInfo(pb.InfoRequest(), metadata=md, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert words in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                stub.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent.agent_id), metadata=md, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        server_info = stub.GetInfo(pb.InfoRequest(), metadata=_wire.authenticate(channel, token, namespace),
                                   timeout=10)
    finally:
        channel.close()
    pid = agent.pid()
    assert server_info.pid == pid and server_info.host == "127.0.0.1"
    assert agent.ping("kept") == "kept"            # the refused DeleteAgent did nothing
    # The token reaches the child through its stdin pipe, not argv or the environment.
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert token.encode() not in f.read()
    with open(f"/proc/{pid}/environ", "rb") as f:
        assert token.encode() not in f.read()


def test_agents_share_a_small_pool_of_children(runtime):
    limit = runtime.settings.child_servers
    assert 1 <= limit <= 4
    agents = child_agents(6, "pool")
    for i, agent in enumerate(agents):
        for _ in range(i):
            agent.reply(Msg("u", i)).result(timeout=10)
    assert [a.get_count() for a in agents] == list(range(6))
    addresses = {a.server for a in agents}
    pids = {a.pid() for a in agents}
    assert len(addresses) <= limit, addresses
    assert len(pids) <= limit, pids
    assert len(pids) == len(addresses)
    assert os.getpid() not in pids
    assert pids <= {c.pid for c in runtime.children.processes}


def _parent_script(n: int) -> str:
    return textwrap.dedent(f"""
        import sys, time
        start = time.monotonic()
        from sample_agents import Echo
        agents = [Echo(f"p{{i}}").to_dist() for i in range({n})]
        pids = sorted({{a.pid() for a in agents}})
        print(f"child-mode init of {n} agents: {{time.monotonic() - start:.2f}} s", file=sys.stderr, flush=True)
        print(" ".join(map(str, pids)), flush=True)
        sys.stdin.readline()        # blocks until told to exit (or killed)
    """)


@pytest.mark.parametrize("how", ["sigkill", "normal-exit"])
def test_children_exit_with_their_parent(how, procs):
    parent = procs([PYTHON, "-c", _parent_script(4)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                   env=CLEAN_ENV, text=True)
    pids: list[int] = []
    try:
        line = parent.stdout.readline()
        assert line.strip(), f"parent printed nothing (exit code {parent.poll()})"
        pids = [int(p) for p in line.split()]
        assert pids and parent.pid not in pids
        assert all(pid_alive(p) and is_agent_server(p) for p in pids)
        if how == "sigkill":
            parent.send_signal(signal.SIGKILL)
            assert parent.wait(10) == -signal.SIGKILL
        else:
            parent.stdin.write("exit\n")
            parent.stdin.flush()
            assert parent.wait(15) == 0
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10, interval=0.05)
    finally:
        for pid in pids:
            if pid_alive(pid) and is_agent_server(pid):
                kill_pid(pid)


def test_child_mode_init_time(procs):
    """Cold start (new process, new children) and warm start of 5 child-mode agents."""
    script = _parent_script(5).replace("sys.stdin.readline()", "pass")
    started = time.monotonic()
    proc = procs([PYTHON, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 env=CLEAN_ENV, text=True)
    out, err = proc.communicate(timeout=60)
    total = time.monotonic() - started
    assert proc.returncode == 0, err
    pids = [int(p) for p in out.split()]
    assert 1 <= len(pids) <= 4
    cold = float(err.split("agents: ")[1].split(" s")[0])
    child_agents(1, "warmup")
    start = time.monotonic()
    agents = child_agents(5, "warm")
    warm = time.monotonic() - start
    assert [a.ping(i) for i, a in enumerate(agents)] == list(range(5))
    print(f"\nchild-mode init of 5 agents: cold {cold:.2f} s (whole process {total:.2f} s), "
          f"warm {warm:.3f} s", file=sys.stderr)
    assert cold < 20.0 and warm < 5.0
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=10)


def test_child_mode_agent_output_is_shown_and_never_blocks(procs):
    script = textwrap.dedent("""
        import os
        from sample_agents import Talker
        agent = Talker("t").to_dist()
        print("PID", agent.pid(), flush=True)
        try:
            print("RESULT", agent.talk(5000, "hello from the child").result(timeout=4), flush=True)
        except Exception as exc:
            print("FAILED", type(exc).__name__, exc, flush=True)
        os._exit(0)   # children see their lifeline close and stop on their own
    """)
    parent = procs([PYTHON, "-c", script], stdout=subprocess.PIPE, env=CLEAN_ENV, text=True)
    child_pid = None
    try:
        out, _ = parent.communicate(timeout=30)
        pid_lines = [line for line in out.splitlines() if line.startswith("PID ")]
        child_pid = int(pid_lines[0].split()[1]) if pid_lines else None
        assert "RESULT 5000" in out, out[-500:]
        assert "hello from the child 004999" in out
    finally:
        if child_pid and pid_alive(child_pid) and is_agent_server(child_pid):
            kill_pid(child_pid)


def test_a_roster_left_by_a_killed_process_is_removed_by_the_next():
    from agentmesh._userdir import user_dir
    from agentmesh.testing import fresh_runtime

    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()                                    # a pid that no longer runs
    stale = os.path.join(user_dir(), f"children-{dead.pid}-left")
    live = os.path.join(user_dir(), f"children-{os.getpid()}-mine")
    os.makedirs(stale, exist_ok=True)
    os.makedirs(live, exist_ok=True)
    try:
        with fresh_runtime() as runtime:
            roster = runtime.children.roster()
            assert os.path.isdir(roster) and str(os.getpid()) in os.path.basename(roster)
        assert not os.path.exists(stale)           # its owner is dead
        assert os.path.exists(live)                # this process lives: left alone
    finally:
        for path in (stale, live):
            if os.path.isdir(path):
                os.rmdir(path)


@pytest.mark.parametrize("fork", ["", "0"])
def test_a_process_with_one_thread_forks_its_children_else_starts_fresh_interpreters(fork, procs):
    """A fork has the parent's modules (a class of __main__ included) and no import to wait for; with
    AGENTMESH_CHILD_FORK=0, or once the process runs threads, children are fresh interpreters."""
    script = textwrap.dedent("""
        import os
        import agentmesh
        from agentmesh import AgentBase

        class Here(AgentBase):
            def where(self):
                with open("/proc/self/comm") as comm, open("/proc/self/cmdline", "rb") as cmdline:
                    name, argv = comm.read().strip(), cmdline.read().split(b"\\0")
                return os.getppid(), name, argv[1:3] == [b"-m", b"agentmesh.server"]

        first = Here("first").to_dist()
        print(os.getpid(), *first.where(), flush=True)
        agentmesh.shutdown()
    """)
    proc = procs([PYTHON, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 env=dict(CLEAN_ENV, AGENTMESH_CHILD_FORK=fork), text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    parent, its_parent, comm, fresh = out.split()
    assert its_parent == parent
    if fork == "0":
        assert fresh == "True"
    else:
        assert (comm, fresh) == ("agentmesh-srv", "False")
    assert "Traceback" not in err, err
