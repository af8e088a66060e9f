"""Agent server processes started by this process: child mode and ``launch(in_subprocess=True)``.

A server process is a fresh interpreter (never a fork: gRPC is not
fork-safe) that reads its configuration from a pipe on stdin and keeps that
pipe as a lifeline: when the parent exits, even by SIGKILL, the pipe closes
and the server stops. Nothing secret travels in argv or the environment.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import Any

from . import _codec, errors
from ._address import format_address
from ._config import ENVIRONMENT, ServerConfig

log = logging.getLogger("agentmesh.server")

READY_PREFIX = "AGENTMESH_READY"
#: variables a server process takes from its configuration instead (registry, namespace, secrets, TLS files,
#: insecure, state store): its parent sends the settings and the credentials that go with them together, so a
#: registry inherited from the environment never arrives without its token. AGENTMESH_STATE_STORE_PASSWORD_FILE
#: is inherited: the state store's password file, where the config names none
_CONFIG_ONLY_ENV = frozenset(ENVIRONMENT[name] for name in ("registry", "namespace", "token", "token_file", "tls_ca",
                                                            "tls_cert", "tls_key", "etcd_ca", "etcd_cert", "etcd_key",
                                                            "etcd_password_file", "insecure", "state_store"))
ERROR_PREFIX = "AGENTMESH_ERROR"


@dataclasses.dataclass(frozen=True)
class Handover:
    """What a server process reads on stdin: its config (classes apart, pickled by value), where it imports
    from, and the pipe where it says READY or ERROR."""

    config: ServerConfig
    classes: bytes
    sys_path: list[str]
    ready_fd: int


class ServerProcess:
    """An agent server running in a child interpreter of this process, as config says."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.port: int | None = None
        self.server_id = ""
        self.metrics_port: int | None = None   # where it serves /metrics, if it does
        self.error: str | None = None
        self._ready = threading.Event()
        # the config says what the server uses, not the inherited environment
        env = {k: v for k, v in os.environ.items() if k not in _CONFIG_ONLY_ENV}
        # READY or ERROR comes back on a pipe of its own; the child's stdout and stderr are ours,
        # so whatever its agents print shows up and can never fill a pipe nobody reads.
        ready_r, ready_w = os.pipe()
        blob = pickle.dumps(Handover(dataclasses.replace(config, agent_classes=()),
                                     _codec.dumps(list(config.agent_classes)), list(sys.path), ready_w))
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "agentmesh.server"],
                                         stdin=subprocess.PIPE, env=env, pass_fds=(ready_w,))
        finally:
            os.close(ready_w)
        self._ready_pipe = os.fdopen(ready_r, "rb")
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack("!Q", len(blob)) + blob)
        self.proc.stdin.flush()
        threading.Thread(target=self._read_ready, name="agentmesh-child-ready", daemon=True).start()
        atexit.register(self._at_exit)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def address(self) -> str:
        """"host:port" once the server listens, else ""."""
        return format_address(self.config.bind_host, self.port) if self.port else ""

    def _read_ready(self) -> None:
        with self._ready_pipe:
            line = self._ready_pipe.readline().decode(errors="replace").strip()
        if line.startswith(READY_PREFIX):
            _, port, server_id, metrics_port = line.split()
            self.port, self.server_id = int(port), server_id
            self.metrics_port = int(metrics_port) or None
        elif line.startswith(ERROR_PREFIX):
            self.error = f"agent server process {self.proc.pid} could not start: {line[len(ERROR_PREFIX):].strip()}"
        else:
            self.error = f"agent server process {self.proc.pid} exited before it was ready (code {self.proc.wait()})"
        self._ready.set()

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Wait until the server listens; return its address."""
        if not self._ready.wait(timeout):
            self.kill()
            raise errors.ServerUnavailableError(f"agent server process {self.pid} did not start within {timeout} s")
        if self.error:
            raise errors.ServerUnavailableError(self.error)
        return self.address

    def stop(self, timeout: float = 10.0, drain: bool = True) -> int | None:
        """Stop the server and reap it; SIGKILL if it lingers.

        drain: SIGTERM, so its agents move and running calls finish; else close
        its lifeline, which stops it at once (as when this process exits).
        """
        atexit.unregister(self._at_exit)
        if self.proc.poll() is None:
            if drain:
                self.proc.terminate()
            else:
                self._close_lifeline()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("agent server process %d did not stop in %g s; killing it", self.pid, timeout)
                self.proc.kill()
                self.proc.wait()
        self._close_lifeline()
        return self.proc.returncode

    def _close_lifeline(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass

    def kill(self) -> None:
        """SIGKILL and reap."""
        atexit.unregister(self._at_exit)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def _at_exit(self) -> None:
        try:
            self.stop(timeout=3.0, drain=False)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def read_config(stdin: Any) -> tuple[ServerConfig, int]:
    """In the server process: the config its parent wrote (sys.path applied, classes unpickled), and the
    descriptor of the pipe where it says READY or ERROR."""
    header = stdin.read(8)
    if len(header) < 8:
        sys.exit("agentmesh.server: expects its configuration on stdin (start it with RpcAgentServerLauncher)")
    (length,) = struct.unpack("!Q", header)
    handover: Handover = pickle.loads(stdin.read(length))
    for path in reversed(handover.sys_path):
        if path not in sys.path:
            sys.path.insert(0, path)
    classes = tuple(_codec.loads(handover.classes))
    return dataclasses.replace(handover.config, agent_classes=classes), handover.ready_fd
