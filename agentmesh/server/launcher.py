"""RpcAgentServerLauncher and the serve loop shared by the CLI and child processes."""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from typing import Any, Callable

from .._config import settings
from ..rpc import _loop, _wire
from ..rpc._proxy import format_address
from ._child import ServerProcess
from ._service import AgentServer

log = logging.getLogger("agentmesh.server")

DEFAULT_CAPACITY = 32
_SERVER_OPTIONS = ("max_message_size", "max_pending_calls", "result_ttl", "max_results", "max_workers",
                   "server_id", "allow_shipped_classes", "registry", "namespace", "labels", "registry_ttl",
                   "advertise_host", "fence_after")


def is_loopback(host: str) -> bool:
    """True when host only listens on this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, tls: bool, insecure: bool) -> None:
    """Refuse to expose an unauthenticated server to the network unless told to."""
    if is_loopback(host) or token or tls:
        return
    if not insecure:
        raise ValueError(
            f"refusing to listen on {host} without a token or TLS: anyone who can reach it could run "
            f"code on this machine. Give token= (--token, AGENTMESH_TOKEN) or TLS, or insecure=True "
            f"(--insecure) if you really mean it")
    log.warning("INSECURE: agent server listening on %s with neither token nor TLS; anyone who "
                "can reach it can run code on this machine", host)


def serve_forever(*, host: str, port: int | None, capacity: int, custom_agent_classes: list | None = None,
                  token: str | None = None, on_ready: Callable[[int, str], None] | None = None,
                  lifeline: Callable[[Callable[[str], None]], None] | None = None,
                  grace: float = 5.0, **options: Any) -> int:
    """Serve until SIGTERM, SIGINT or the lifeline says stop; returns the exit code (0 after a drain)."""
    if token:
        settings.token = token  # server-to-server calls (placeholder fetches, proxies in agents) carry it
    server = AgentServer(host=host, port=port or 0, capacity=capacity,
                         custom_agent_classes=custom_agent_classes, token=token,
                         **{k: v for k, v in options.items() if k in _SERVER_OPTIONS})
    _loop.run_sync(server.start())

    def stop(reason: str, grace: float = grace) -> None:
        log.info("agent server %s stopping: %s", server.server_id, reason)
        _loop.spawn(server.stop(grace))

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: stop(signal.Signals(signum).name))
    if lifeline is not None:
        threading.Thread(target=lifeline, args=(stop,), name="agentmesh-lifeline", daemon=True).start()
    if on_ready is not None:
        on_ready(server.port, server.server_id)
    while not server.finished.wait(0.5):
        pass
    return 0


class RpcAgentServerLauncher:
    """Starts an agent server, in this process or in a child process.

    Arguments follow AgentScope's launcher; unknown AgentScope-only options
    are accepted and ignored. ``port=None`` picks a free port.
    """

    def __init__(self, host: str = "localhost", port: int | None = None, capacity: int = DEFAULT_CAPACITY,
                 custom_agent_classes: list[type] | None = None, registry: str | None = None,
                 namespace: str = "default", labels: dict[str, str] | None = None, token: str | None = None,
                 insecure: bool = False, max_message_size: int = _wire.DEFAULT_MAX_MESSAGE_SIZE,
                 grace: float = 5.0, **options: Any) -> None:
        self.host = host
        self.port = int(port) if port not in (None, "") else None
        self.capacity = capacity
        self.custom_agent_classes = list(custom_agent_classes or [])
        self.registry = registry if registry is not None else settings.registry
        self.namespace = namespace
        self.labels = dict(labels or {})
        self.token = token if token is not None else settings.token
        self.insecure = insecure
        self.max_message_size = max_message_size
        self.grace = grace
        self.options = {k: v for k, v in options.items() if k in _SERVER_OPTIONS}
        ignored = sorted(set(options) - set(self.options))
        if ignored:
            log.debug("RpcAgentServerLauncher: options %s are not used by agentmesh", ignored)
        self.server_id = ""
        self._server: AgentServer | None = None
        self._process: ServerProcess | None = None

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def launch(self, in_subprocess: bool = True) -> None:
        """Start serving; returns once the server listens (self.port is then set)."""
        check_exposure(self.host, self.token, bool(settings.tls_cert), self.insecure)
        if in_subprocess:
            self._process = ServerProcess({
                "host": self.host, "port": self.port or 0, "capacity": self.capacity,
                "custom_agent_classes": self.custom_agent_classes, "token": self.token,
                "max_message_size": self.max_message_size, "grace": self.grace, "lifeline": True,
                **self._registry_options(), **self.options,
            })
            self._process.wait_ready()
            self.port = self._process.port
            self.server_id = self._process.server_id
            return
        if self.token:
            settings.token = self.token
        self._server = AgentServer(host=self.host, port=self.port or 0, capacity=self.capacity,
                                   custom_agent_classes=self.custom_agent_classes, token=self.token,
                                   max_message_size=self.max_message_size, **self._registry_options(),
                                   **self.options)
        self.port = _loop.run_sync(self._server.start())
        self.server_id = self._server.server_id
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._stop_async())

    def _registry_options(self) -> dict[str, Any]:
        if not self.registry:
            return {}
        return {"registry": self.registry, "namespace": self.namespace, "labels": self.labels}

    @property
    def pid(self) -> int:
        return self._process.pid if self._process else os.getpid()

    def _stop_async(self) -> None:
        if self._server is not None:
            _loop.spawn(self._server.stop(self.grace))

    def wait_until_terminate(self) -> None:
        """Block until the server stops (shutdown(), SIGTERM, or the process ends)."""
        if self._process is not None:
            self._process.proc.wait()
        elif self._server is not None:
            while not self._server.finished.wait(0.5):
                pass

    def shutdown(self) -> None:
        """Stop the server: running calls finish (up to the grace period), then it exits."""
        if self._process is not None:
            self._process.stop(timeout=self.grace + 5)
        elif self._server is not None:
            _loop.run_sync(self._server.stop(self.grace))
