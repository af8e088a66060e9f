"""Trust between the users and files of one machine: the file root, the child-mode rosters, a client's /metrics."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import textwrap
import threading
import time
import urllib.request

import grpc
import pytest

from agentmesh.testing import wire as _wire
from agentmesh.v1 import agent_server_pb2 as pb
from agentmesh.v1 import agent_server_pb2_grpc as pb_grpc
from conftest import PYTHON, is_agent_server, kill_pid, pid_alive, wait_until

TOKEN = "local-Hy6Qp2Wn9Xe4Rt7Uc1Mb5Zk8Ls3Dv0Fa"
#: subprocesses get no registry and no shared token from the environment
CLEAN_ENV = {"AGENTMESH_REGISTRY": "", "AGENTMESH_TOKEN": ""}


# -- 6. a download cannot be raced outside the file root --------------------------------------------
def _download(stub, channel, path: str) -> bytes | None:
    """The bytes DownloadFile serves for path, or None when it refuses."""
    try:
        chunks = stub.DownloadFile(pb.FileRequest(path=path), metadata=_wire.authenticate(channel, TOKEN), timeout=5)
        return b"".join(c.data for c in chunks)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return None


def test_a_file_swapped_for_a_symlink_during_downloads_never_serves_what_lies_outside(servers, tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET " * 64)
    inside = b"inside " * 64
    (root / "swap").write_bytes(inside)
    launcher = servers(file_dir=str(root), token=TOKEN)
    stop = threading.Event()

    def swap() -> None:
        """Replace root/swap by a symlink to the secret and back, atomically, until told to stop."""
        n = 0
        while not stop.is_set():
            n += 1
            link, plain = root / f".link{n}", root / f".plain{n}"
            link.symlink_to(secret)
            os.replace(link, root / "swap")
            plain.write_bytes(inside)
            os.replace(plain, root / "swap")

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    served = refused = 0
    try:
        with grpc.insecure_channel(f"127.0.0.1:{launcher.port}") as channel:
            stub = pb_grpc.AgentServerStub(channel)
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline and served + refused < 20_000:
                data = _download(stub, channel, "swap")
                assert data is None or b"SECRET" not in data, "the secret outside the root was served"
                if data is None:
                    refused += 1
                else:
                    assert data == inside
                    served += 1
    finally:
        stop.set()
        swapper.join(timeout=10)
    assert served > 0 and refused > 0, (served, refused)   # both sides of the race were met


def test_links_inside_the_root_are_refused_and_plain_paths_still_served(servers, tmp_path):
    root = tmp_path / "served"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_bytes(b"a")
    os.mkfifo(root / "fifo")
    (root / "to-a").symlink_to(root / "sub" / "a.txt")      # a link that stays inside: refused all the same
    (root / "to-sub").symlink_to(root / "sub")
    (tmp_path / "alias").symlink_to(root)
    (tmp_path / "outside.txt").write_bytes(b"outside")
    launcher = servers(file_dir=str(root), token=TOKEN)
    with grpc.insecure_channel(f"127.0.0.1:{launcher.port}") as channel:
        stub = pb_grpc.AgentServerStub(channel)
        for path in ("sub/a.txt", str(root / "sub" / "a.txt"), "sub/../sub/./a.txt", "./sub//a.txt",
                     "../served/sub/a.txt", str(tmp_path / "alias" / "sub" / "a.txt")):   # a link above the root
            assert _download(stub, channel, path) == b"a", path
        for path in ("to-a", "to-sub/a.txt", "fifo", "sub", ".", "sub/a.txt/x", "../outside.txt",
                     str(tmp_path / "alias" / "to-a"), str(tmp_path / "outside.txt")):
            assert _download(stub, channel, path) is None, path
        with pytest.raises(grpc.RpcError, match="symbolic link"):
            list(stub.DownloadFile(pb.FileRequest(path="to-sub/a.txt"), metadata=_wire.authenticate(channel, TOKEN),
                                   timeout=5))
        assert _download(stub, channel, "sub/a.txt") == b"a"     # the fifo blocked nothing


# -- 7. child mode survives whatever lies in the temp folder and the per-user folder ------------------
def _dead_pid() -> int:
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    return dead.pid


CHILD_MODE_SCRIPT = textwrap.dedent("""
    import os, agentmesh
    from agentmesh._runtime import default_runtime
    from sample_agents import Echo
    agentmesh.init()
    agent = Echo("planted").to_dist()
    print("PIDS", *[c.pid for c in default_runtime().children.processes], flush=True)
    print("PING", agent.ping(7), flush=True)
    print("ROSTER", default_runtime().children.roster(), flush=True)
    agentmesh.shutdown()
""")


def _run_child_mode(procs, env: dict[str, str]) -> dict[str, str]:
    """Run CHILD_MODE_SCRIPT in a process of its own with env; its PIDS, PING and ROSTER lines."""
    proc = procs([PYTHON, "-c", CHILD_MODE_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 env=dict(CLEAN_ENV, **env), text=True)
    out, err = proc.communicate(timeout=60)
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    try:
        assert proc.returncode == 0, err[-2000:]
        return lines
    finally:
        for pid in lines.get("PIDS", "").split():
            if pid_alive(int(pid)) and is_agent_server(int(pid)):
                kill_pid(int(pid))


def test_entries_planted_in_the_temp_and_user_folders_never_break_child_mode(procs, tmp_path):
    shared, cache = tmp_path / "tmp", tmp_path / "cache"
    shared.mkdir()
    mine = cache / "agentmesh"
    mine.mkdir(parents=True, mode=0o700)
    os.chmod(mine, 0o700)
    dead = _dead_pid()
    outside = tmp_path / "keep"
    outside.mkdir()
    (outside / "file").write_text("not a roster")
    for folder, prefix in ((shared, "agentmesh-children-"), (mine, "children-"), (mine, "agentmesh-children-")):
        (folder / f"{prefix}99999999999999999999-x").write_text("")      # a pid no int of C holds
        (folder / f"{prefix}{dead}-dangling").symlink_to(tmp_path / "nowhere")
        (folder / f"{prefix}{dead}-to-a-folder").symlink_to(outside)
        (folder / f"{prefix}{dead}-file").write_text("")
        (folder / f"{prefix}-").mkdir()
        (folder / f"{prefix}0-zero").mkdir()
    left = mine / f"children-{dead}-left"             # a real roster of a process that died: swept
    left.mkdir(mode=0o700)
    lines = _run_child_mode(procs, {"TMPDIR": str(shared), "XDG_CACHE_HOME": str(cache)})
    assert lines["PING"] == "7"
    roster = lines["ROSTER"]
    assert os.path.dirname(roster) == str(mine), roster
    assert not os.path.exists(left)
    assert (outside / "file").read_text() == "not a roster"   # a link is never followed into
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o700


def test_a_user_folder_others_may_enter_is_refused_and_child_mode_still_works(procs, tmp_path, monkeypatch):
    """The private folder is used only when it is a folder of this user's that nobody else may enter."""
    from agentmesh._userdir import user_dir

    cache = tmp_path / "cache"
    mine = cache / "agentmesh"
    mine.mkdir(parents=True)
    os.chmod(mine, 0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    with pytest.raises(PermissionError, match="chmod 700"):
        user_dir()
    os.chmod(mine, 0o700)
    assert user_dir() == str(mine)
    if os.getuid() == 0:                              # root can make it someone else's
        os.chown(mine, 65534, 65534)
        with pytest.raises(PermissionError, match="not owned"):
            user_dir()
        os.chown(mine, os.getuid(), os.getgid())
    os.rmdir(mine)
    mine.symlink_to(tmp_path)
    with pytest.raises(PermissionError, match="not a folder"):
        user_dir()
    os.unlink(mine)
    assert user_dir() == str(mine) and stat.S_IMODE(os.stat(mine).st_mode) == 0o700   # made now
    os.chmod(mine, 0o755)
    lines = _run_child_mode(procs, {"XDG_CACHE_HOME": str(cache), "TMPDIR": str(tmp_path)})
    assert lines["PING"] == "7"
    assert not lines["ROSTER"].startswith(str(mine))      # not in the refused folder


# -- 8. a client's /metrics: loopback, and bounded connections -----------------------------------------
METRICS_SCRIPT = textwrap.dedent("""
    import sys, agentmesh
    from agentmesh import _metrics
    _metrics.CONNECTION_TIMEOUT_S = float(sys.argv[1])
    agentmesh.init(metrics_port=0)
    print(agentmesh.metrics_port(), flush=True)
    sys.stdin.readline()
""")


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on port (IPv4 only: hex in /proc/net/tcp)."""
    found = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            hex_addr, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(socket.inet_ntoa(bytes.fromhex(hex_addr)[::-1]))
    return found


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def _scrape(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return b"agentmesh_client_sessions" in reply.read()
    except OSError:
        return False


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_clients_metrics_listen_on_loopback_and_half_open_requests_are_bounded(procs):
    proc = procs([PYTHON, "-c", METRICS_SCRIPT, "1.0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 env=CLEAN_ENV, text=True)
    port = int(proc.stdout.readline())
    assert _listening_addresses(port) == {"127.0.0.1"}
    assert _scrape(port)
    before = _threads(proc.pid)
    sockets = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")       # never finished
            sockets.append(sock)
        peak = max(_threads(proc.pid) for _ in range(20))
        assert peak - before <= 64, (before, peak)
        wait_until(lambda: all(_closed(s) for s in sockets), timeout=15)  # dropped after their timeout
        assert wait_until(lambda: _scrape(port), timeout=10)
        assert wait_until(lambda: _threads(proc.pid) <= before + 1, timeout=10)
    finally:
        for sock in sockets:
            sock.close()
        proc.stdin.close()
        proc.wait(timeout=30)


def test_metrics_host_opens_a_clients_metrics_to_the_network(runtime):
    runtime.configure(metrics_host="0.0.0.0")
    port = runtime.serve_metrics(0)
    try:
        assert _listening_addresses(port) == {"0.0.0.0"}
    finally:
        runtime.stop_metrics()
