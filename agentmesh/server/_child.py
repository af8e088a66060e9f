"""Server processes started by this process: child mode and launch(in_subprocess=True).

A child is a fresh interpreter (never a fork: gRPC is not fork-safe) that
reads its configuration from a pipe on stdin and keeps that pipe as a
lifeline: when the parent exits, even by SIGKILL, the pipe closes and the
child stops. Nothing secret travels in argv or the environment.
"""
from __future__ import annotations

import atexit
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import Any

from .. import errors
from ..rpc import _wire

log = logging.getLogger("agentmesh.server")

READY_PREFIX = "AGENTMESH_READY"
ERROR_PREFIX = "AGENTMESH_ERROR"


class ServerProcess:
    """An agent server running in a child interpreter of this process."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.port: int | None = None
        self.server_id = ""
        self.error: str | None = None
        self._ready = threading.Event()
        classes = config.pop("custom_agent_classes", None) or []
        outer = dict(config, sys_path=list(sys.path), classes_blob=_wire.dumps(classes))
        env = dict(os.environ)
        for name in _CONFIG_ONLY_ENV:   # the config says what the server uses, not the inherited environment
            env.pop(name, None)
        # READY or ERROR comes back on a pipe of its own; the child's stdout and stderr are ours,
        # so whatever its agents print shows up and can never fill a pipe nobody reads.
        ready_r, ready_w = os.pipe()
        outer["ready_fd"] = ready_w
        blob = pickle.dumps(outer)
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
        _live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        from ..rpc._proxy import format_address

        return format_address(self.config["host"], self.port) if self.port else ""

    def _read_ready(self) -> None:
        with self._ready_pipe:
            line = self._ready_pipe.readline().decode(errors="replace").strip()
        if line.startswith(READY_PREFIX):
            _, port, server_id = line.split()
            self.port, self.server_id = int(port), server_id
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
        _live.discard(self)
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
        _live.discard(self)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


_live: set[ServerProcess] = set()

_CONFIG_ONLY_ENV = ("AGENTMESH_TOKEN", "AGENTMESH_TLS_CA", "AGENTMESH_TLS_CERT", "AGENTMESH_TLS_KEY",
                    "AGENTMESH_ETCD_CA", "AGENTMESH_ETCD_CERT", "AGENTMESH_ETCD_KEY")


@atexit.register
def _stop_all() -> None:
    for child in list(_live):
        try:
            child.stop(timeout=3.0, drain=False)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class ChildPool:
    """A few child servers shared by all child-mode agents of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: list[ServerProcess] = []
        self._placed: dict[ServerProcess, int] = {}

    def _start(self, n: int) -> None:
        from .. import _tls
        from .._config import settings

        for _ in range(n):
            child = ServerProcess({
                "host": "127.0.0.1", "port": 0, "capacity": settings.child_capacity,
                "token": settings.client_token(), "max_message_size": settings.max_message_size,
                "lifeline": True, **_child_tls(_tls.client_settings()),
            })
            self._children.append(child)
            self._placed[child] = 0

    def choose(self, exclude: set[str] | frozenset = frozenset()) -> ServerProcess:
        """The child with the fewest agents placed so far (starting the pool on first use)."""
        from .._config import settings

        with self._lock:
            for dead in [c for c in self._children if c.proc.poll() is not None]:
                self._children.remove(dead)
                self._placed.pop(dead, None)
            if len(self._children) < settings.child_servers:   # first use, or replacing a dead child
                self._start(settings.child_servers - len(self._children))
            candidates = [c for c in self._children if not c.address or c.address not in exclude]
            if not candidates:
                self._start(1)
                candidates = self._children[-1:]
            child = min(candidates, key=lambda c: self._placed[c])
            self._placed[child] += 1
        return child

    def grow(self) -> ServerProcess:
        """Start one more child (the others are full)."""
        with self._lock:
            self._start(1)
            return self._children[-1]

    def stop(self) -> None:
        with self._lock:
            children, self._children = self._children, []
        for child in children:
            child.stop(timeout=3.0, drain=False)


child_pool = ChildPool()


def _child_tls(client: dict[str, str | None]) -> dict[str, str | None]:
    """TLS for a child server: the parent's certificate when it has one, since its calls use TLS then.

    Children listen on loopback behind a random token; with a certificate
    (which must name 127.0.0.1) they serve TLS with it and make their own
    calls like the parent. A parent with only a CA gets plaintext children.
    """
    if client["tls_cert"] and client["tls_key"]:
        return {"tls_cert": client["tls_cert"], "tls_key": client["tls_key"], "tls_ca": client["tls_ca"]}
    return {}


def child_main() -> None:
    """Entry of a server process: read config from stdin, serve, exit when told or orphaned."""
    from .launcher import serve_forever

    stdin = sys.stdin.buffer
    header = stdin.read(8)
    if len(header) < 8:
        sys.exit("agentmesh.server: expects its configuration on stdin (start it with RpcAgentServerLauncher)")
    (length,) = struct.unpack("!Q", header)
    config = pickle.loads(stdin.read(length))
    for path in reversed(config.pop("sys_path")):
        if path not in sys.path:
            sys.path.insert(0, path)
    classes = _wire.loads(config.pop("classes_blob"))
    lifeline = config.pop("lifeline", True)
    ready = os.fdopen(config.pop("ready_fd"), "w")

    def announce(port: int, server_id: str) -> None:
        ready.write(f"{READY_PREFIX} {port} {server_id}\n")
        ready.close()

    def watch_lifeline(stop: Any) -> None:
        stdin.read()  # returns at EOF: the parent closed the pipe or died; nobody is left to drain for
        stop("the parent process exited", grace=0.5)

    logging.basicConfig(level=os.environ.get("AGENTMESH_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s agentmesh-server[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        code = serve_forever(custom_agent_classes=classes, on_ready=announce,
                             lifeline=watch_lifeline if lifeline else None, **config)
    except Exception as exc:  # noqa: BLE001 - tell the parent why, in one line
        if not ready.closed:
            ready.write(f"{ERROR_PREFIX} {type(exc).__name__}: {' '.join(str(exc).split())}\n")
            ready.close()
        raise
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown: gRPC's can take seconds

