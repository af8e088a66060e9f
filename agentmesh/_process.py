"""Agent server processes started by this process: child mode and ``launch(in_subprocess=True)``.

A child-mode server is a fork of this one while this process runs a single
thread (no gRPC core and no I/O loop yet, so the copy is consistent; it has
agentmesh and the caller's modules imported already: ~15 ms instead of ~300 ms
of imports); any other server process (``launch(in_subprocess=True)``, whose
parent may be large and long-lived) is a fresh interpreter that reads its
configuration from a pipe on stdin. Either keeps a pipe from its parent as a
lifeline: when the parent exits, even by SIGKILL, the pipe closes and the
server stops. Nothing secret travels in argv or the environment.
``AGENTMESH_CHILD_FORK=0`` always starts fresh interpreters.
"""
from __future__ import annotations

import atexit
import dataclasses
import importlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
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


#: this process's ends of its server processes' pipes: a forked server closes them, so that a sibling's lifeline
#: still ends when this process does
_OUR_ENDS: set[int] = set()


def _one_thread() -> bool:
    """True while this process runs a single thread: a fork of it is then a consistent copy."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:   # not Linux: never fork
        return False


def _may_fork() -> bool:
    return hasattr(os, "fork") and os.environ.get("AGENTMESH_CHILD_FORK", "") != "0" and _one_thread()


class _Forked:
    """A server process forked from this one, seen as ServerProcess sees a Popen."""

    def __init__(self, pid: int, lifeline: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(lifeline, "wb")   # closing it ends the server's lifeline
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:   # reaped elsewhere (os.wait() of the caller's)
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            fd = -1
        try:
            while self.poll() is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"agent server process {self.pid}", timeout or 0)
                if fd >= 0:
                    select.select([fd], [], [], left)   # readable once the process exits
                else:
                    time.sleep(min(0.01, left) if left is not None else 0.01)
        finally:
            if fd >= 0:
                os.close(fd)
        return self.returncode  # type: ignore[return-value]

    def _signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


def _serve_forked(config: ServerConfig, ready_w: int, lifeline_r: int) -> None:
    """In a forked server process: drop what belongs to the parent, then serve as a fresh one would."""
    try:
        for fd in _OUR_ENDS:
            try:
                os.close(fd)
            except OSError:
                pass
        for name in _CONFIG_ONLY_ENV:   # the config says what the server uses, not the inherited environment
            os.environ.pop(name, None)
        importlib.import_module("agentmesh.server._child").forked_main(config, ready_w, lifeline_r)
    except BaseException:  # noqa: BLE001 - shown as a fresh interpreter would show it; the parent got the ERROR line
        traceback.print_exc()
    finally:
        os._exit(1)   # forked_main exits itself; never return into the parent's code


class ServerProcess:
    """An agent server running in a child process of this one (a fork or a fresh interpreter), as config says."""

    def __init__(self, config: ServerConfig, fork: bool = False) -> None:
        """fork: a fork of this process when it runs a single thread (child mode), else a fresh interpreter."""
        self.config = config
        self.port: int | None = None
        self.server_id = ""
        self.metrics_port: int | None = None   # where it serves /metrics, if it does
        self.error: str | None = None
        self._ready = threading.Event()
        self._reading = threading.Lock()   # the first to wait starts the thread that reads READY (see below)
        self._reader: threading.Thread | None = None
        # READY or ERROR comes back on a pipe of its own; the child's stdout and stderr are ours,
        # so whatever its agents print shows up and can never fill a pipe nobody reads.
        ready_r, ready_w = os.pipe()
        try:
            self.proc = (self._fork(config, ready_r, ready_w) if fork and _may_fork()
                         else self._spawn(config, ready_w))
        finally:
            os.close(ready_w)
        self._ready_pipe = os.fdopen(ready_r, "rb")
        self._ends = (ready_r, self.proc.stdin.fileno())  # type: ignore[union-attr]
        _OUR_ENDS.update(self._ends)
        atexit.register(self._at_exit)

    @staticmethod
    def _spawn(config: ServerConfig, ready_w: int) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k not in _CONFIG_ONLY_ENV}
        blob = pickle.dumps(Handover(dataclasses.replace(config, agent_classes=()),
                                     _codec.dumps(list(config.agent_classes)), list(sys.path), ready_w))
        proc = subprocess.Popen([sys.executable, "-m", "agentmesh.server"],
                                stdin=subprocess.PIPE, env=env, pass_fds=(ready_w,))
        assert proc.stdin is not None
        proc.stdin.write(struct.pack("!Q", len(blob)) + blob)
        proc.stdin.flush()
        return proc

    @staticmethod
    def _fork(config: ServerConfig, ready_r: int, ready_w: int) -> _Forked:
        lifeline_r, lifeline_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):   # else the child writes what is buffered here a second time
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(lifeline_w)
            _serve_forked(config, ready_w, lifeline_r)
        os.close(lifeline_r)
        return _Forked(pid, lifeline_w)

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
        line = self._ready_pipe.readline().decode(errors="replace").strip()
        _OUR_ENDS.discard(self._ends[0])   # before the descriptor is closed, and its number free for reuse
        self._ready_pipe.close()
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
        with self._reading:   # started here, not at birth: a thread would keep the next child from being a fork
            if self._reader is None:
                self._reader = threading.Thread(target=self._read_ready, name="agentmesh-child-ready", daemon=True)
                self._reader.start()
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
        _OUR_ENDS.discard(self._ends[1])
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
