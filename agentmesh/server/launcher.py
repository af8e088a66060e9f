"""RpcAgentServerLauncher and the serve loop shared by the CLI and child processes."""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Callable

from .. import _tls
from .._address import check_port, format_address, is_loopback
from .._config import DEFAULT_CAPACITY, DEFAULT_MAX_MESSAGE_SIZE, Settings, check_capacity, read_secret
from .._process import ServerProcess
from .._runtime import default_runtime
from ..discovery.records import check_labels
from ..etcd import parse_registry_url
from ._auth import server_token
from ._files import FileRoot
from ._service import AgentServer

log = logging.getLogger("agentmesh.server")

_SERVER_OPTIONS = ("max_message_size", "max_pending_calls", "result_ttl", "max_results", "max_result_bytes",
                   "session_backlog_bytes", "max_fetch_waiters", "max_classes", "max_class_bytes", "max_workers",
                   "server_id", "allow_shipped_classes", "registry", "namespace", "labels", "registry_ttl",
                   "advertise_host", "fence_after", "file_dir", "agent_dir", "metrics_port")


def check_exposure(host: str, token: str | None, tls: bool, insecure: bool, tls_client_auth: bool = False) -> None:
    """Refuse to expose a server to the network without TLS, or without authenticating its callers, unless told to.

    On a network (non-loopback) address the traffic needs TLS: in plaintext
    the token and every pickle cross readable and alterable, and callers
    cannot tell this server from an impostor. Callers must also be
    authenticated: by a token, or by mutual TLS (``tls`` with
    ``tls_client_auth``: callers need a certificate from the client CA).
    """
    if is_loopback(host) or (tls and (token or tls_client_auth)):
        return
    if not insecure:
        if tls:
            raise ValueError(
                f"refusing to listen on {host} with TLS but neither a token nor a client CA: TLS without "
                f"client certificates encrypts the traffic, yet anyone who can reach the port could run code "
                f"on this machine. Give token= (--token, AGENTMESH_TOKEN) or tls_client_ca= "
                f"(--tls-client-ca) for mutual TLS, or insecure=True (--insecure) if you really mean it")
        if not token:
            raise ValueError(
                f"refusing to listen on {host} without a token or mutual TLS, and without TLS: anyone who can "
                f"reach it could run code on this machine. Give tls_cert= and tls_key= (--tls-cert, --tls-key) "
                f"with tls_client_ca= (--tls-client-ca) or token= (--token, AGENTMESH_TOKEN), or "
                f"insecure=True (--insecure) if you really mean it")
        raise ValueError(
            f"refusing to listen on {host} without TLS: the token and every call would cross the network in "
            f"plaintext, readable and alterable on the way, and callers could not verify this server. Give "
            f"tls_cert= and tls_key= (--tls-cert, --tls-key), or insecure=True (--insecure) if you really mean it")
    missing = " and without ".join(what for what, absent in (("TLS", not tls), ("a token or mutual TLS", not token))
                           if absent)
    log.warning("INSECURE: agent server listening on %s without %s; anyone who can reach it can %s", host,
                missing, "run code on this machine" if not token else "read and alter its traffic")


def require_dial_ca(cert: str, ca: str | None) -> None:
    """A server process whose own calls present cert needs a CA to verify peers: ValueError naming the remedy."""
    if not ca:
        raise ValueError(
            f"agentmesh server: its own calls (placeholder fetches, proxies inside its agents) present {cert} "
            f"and must verify the servers they reach, which needs the CA their certificates chain to: give "
            f"tls_ca (--tls-ca, AGENTMESH_TLS_CA) or a client CA (tls_client_ca, --tls-client-ca); agentmesh "
            f"never trusts the system's public roots")


def _process_settings(current: Settings, tls: _tls.ServerTLS | None, *, token: str | None, registry: str | None,
                      namespace: str, tls_ca: str | None, client_cert: str | None, client_key: str | None,
                      insecure: bool, etcd_ca: str | None, etcd_cert: str | None,
                      etcd_key: str | None, etcd_password: str | None = None) -> dict[str, Any]:
    """The settings of a server process's own calls (placeholder fetches, proxies in agents, etcd).

    Its client certificate is client_cert (a child server's: its parent's),
    else the server's own certificate; peers are verified with tls_ca, else
    the configured CA, else the client CA, and with a certificate but none of
    those it does not start (ValueError).
    """
    options: dict[str, Any] = {name: value for name, value in (("token", token), ("etcd_ca", etcd_ca),
                                                                 ("etcd_cert", etcd_cert), ("etcd_key", etcd_key),
                                                                 ("etcd_password", etcd_password))
                               if value}
    options["namespace"] = namespace        # its own calls are made in its namespace
    if registry and not current.registry:   # its own proxies and fetches follow the registry too
        options["registry"] = registry
    cert, key = (client_cert, client_key) if client_cert else (tls.cert, tls.key) if tls else (None, None)
    ca = tls_ca or current.tls_ca or (tls.client_ca if tls else None)
    if cert:
        require_dial_ca(cert, ca)
        options.update(tls_cert=cert, tls_key=key)
    if ca:
        options["tls_ca"] = ca
    if insecure:
        options["insecure"] = True
    return options


def serve_forever(*, host: str, port: int | None, capacity: int, custom_agent_classes: list | None = None,
                  token: str | None = None, on_ready: Callable[[int, str, int], None] | None = None,
                  lifeline: Callable[[Callable[[str], None]], None] | None = None,
                  grace: float = 5.0, tls_cert: str | None = None, tls_key: str | None = None,
                  tls_client_ca: str | None = None, tls_ca: str | None = None, client_cert: str | None = None,
                  client_key: str | None = None, insecure: bool = False, roster: str | None = None,
                  dial_token: str | None = None, dial_registry: str | None = None,
                  etcd_ca: str | None = None, etcd_cert: str | None = None, etcd_key: str | None = None,
                  etcd_password: str | None = None,
                  **options: Any) -> int:
    """Serve until SIGTERM, SIGINT or the lifeline says stop; returns the exit code (0 after a drain).

    tls_cert/tls_key: serve TLS (and use them as this process's client
    certificate unless client_cert/client_key are given); tls_client_ca:
    require client certificates from that CA; tls_ca: the CA peers'
    certificates chain to, for this process's own calls; insecure: those
    calls may use plaintext to network addresses; roster: a child server's
    list of its parent's children, where it adds its port, dial_token the
    token its parent dials other servers with (its own token is for its
    siblings) and dial_registry the registry its parent follows (its own calls
    follow it; it does not register there); etcd_password: the password of
    the registry URL's user.
    """
    tls = _tls.ServerTLS.from_options(tls_cert, tls_key, tls_client_ca)
    options["labels"] = check_labels(options.get("labels"))   # a ValueError naming the label, before it listens
    runtime = default_runtime()   # this process is the server: its runtime serves it
    own_calls_token = dial_token if roster is not None else token   # a child's own token is for its siblings
    runtime.configure(**_process_settings(
        runtime.settings, tls, token=own_calls_token, registry=options.get("registry") or dial_registry,
        namespace=options.get("namespace", "default"), tls_ca=tls_ca, client_cert=client_cert,
        client_key=client_key, insecure=insecure, etcd_ca=etcd_ca, etcd_cert=etcd_cert, etcd_key=etcd_key,
        etcd_password=etcd_password))
    server = AgentServer(runtime=runtime, host=host, port=port or 0, capacity=capacity,
                         custom_agent_classes=custom_agent_classes, token=token, tls=tls, grace=grace,
                         **{k: v for k, v in options.items() if k in _SERVER_OPTIONS})
    runtime.run(server.start())
    if roster is not None:
        runtime.children.join(roster, server.port, server.namespace, token)

    def stop(reason: str, grace: float = grace) -> None:
        log.info("agent server %s stopping: %s", server.server_id, reason)
        runtime.loop.spawn(server.stop(grace))

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: stop(signal.Signals(signum).name))
    if lifeline is not None:
        threading.Thread(target=lifeline, args=(stop,), name="agentmesh-lifeline", daemon=True).start()
    if on_ready is not None:
        on_ready(server.port, server.server_id, server.metrics_port or 0)
    while not server.finished.wait(0.5):
        pass
    return 0


class RpcAgentServerLauncher:
    """Starts an agent server, in this process or in a child process.

    Arguments follow AgentScope's launcher; unknown AgentScope-only options
    are accepted and ignored. ``port=None`` picks a free port.

    TLS: ``tls_cert`` and ``tls_key`` (default: this process's ``tls_cert``
    and ``tls_key`` settings, ``AGENTMESH_TLS_CERT``/``_KEY``) make the server
    speak TLS; ``tls_client_ca`` also requires every caller to present a
    certificate signed by that CA (mutual TLS). Pass ``tls_cert=""`` for a
    plaintext server in a process that has a certificate.

    A TLS server's own calls present its certificate and verify peers with
    this process's ``tls_ca``, else ``tls_client_ca``: with neither,
    launching is a ValueError.

    ``token_file`` names a file holding the token (read once, here); give it
    or ``token``, not both. A server process gets the token over a pipe,
    never in its argv or environment.

    A network (non-loopback) ``host`` needs TLS and authenticated callers (a
    token or mutual TLS); ``insecure=True`` allows either to be missing, with a
    warning, and lets the server's own calls use plaintext on the network.
    """

    def __init__(self, host: str = "localhost", port: int | None = None, capacity: int = DEFAULT_CAPACITY,
                 custom_agent_classes: list[type] | None = None, registry: str | None = None,
                 namespace: str | None = None, labels: dict[str, str] | None = None, token: str | None = None,
                 insecure: bool = False, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 grace: float = 5.0, tls_cert: str | None = None, tls_key: str | None = None,
                 tls_client_ca: str | None = None, token_file: str | None = None, **options: Any) -> None:
        self.host = host
        self.port = check_port(port)
        self.capacity = check_capacity(capacity)
        self.custom_agent_classes = list(custom_agent_classes or [])
        self._runtime = default_runtime()
        settings = self._runtime.settings
        self.registry = registry if registry is not None else settings.registry
        if self.registry:
            parse_registry_url(self.registry)     # a ValueError naming the URL (redacted) before anything starts
        self.namespace = namespace or settings.namespace
        self.labels = check_labels(labels)     # a ValueError naming the bad label, before anything starts
        if token is not None and token_file is not None:
            raise ValueError("both token= and token_file= were given to RpcAgentServerLauncher; give one")
        self.token = read_secret(token_file) if token_file is not None else (
            token if token is not None else settings.token)
        self.insecure = insecure
        if tls_cert is None and tls_key is None:
            tls_cert, tls_key = settings.tls_cert, settings.tls_key
        self.tls = _tls.ServerTLS.from_options(tls_cert, tls_key, tls_client_ca)
        self.token = server_token(self.token, host, bool(self.tls and self.tls.mutual), self.registry)
        self.max_message_size = max_message_size
        self.grace = grace
        self.options = {k: v for k, v in options.items() if k in _SERVER_OPTIONS}
        if self.options.get("file_dir"):
            self.options["file_dir"] = FileRoot(self.options["file_dir"]).path   # a ValueError now, not in the child
        ignored = sorted(set(options) - set(self.options))
        if ignored:
            log.debug("RpcAgentServerLauncher: options %s are not used by agentmesh", ignored)
        self.server_id = ""
        #: where the server serves /metrics once launched (metrics_port= given; 0 picks a free port), else None
        self.metrics_port: int | None = None
        self._server: AgentServer | None = None
        self._process: ServerProcess | None = None

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def launch(self, in_subprocess: bool = True) -> None:
        """Start serving; returns once the server listens (self.port is then set)."""
        check_exposure(self.host, self.token, self.tls is not None, self.insecure,
                       tls_client_auth=self.tls is not None and self.tls.mutual)
        if in_subprocess:
            self._process = ServerProcess({
                "host": self.host, "port": self.port or 0, "capacity": self.capacity,
                "custom_agent_classes": self.custom_agent_classes, "token": self.token,
                "max_message_size": self.max_message_size, "grace": self.grace, "lifeline": True,
                **self._tls_options(), **self._registry_options(), **self.options,
            })
            self._process.wait_ready()
            self.port = self._process.port
            self.server_id = self._process.server_id
            self.metrics_port = self._process.metrics_port
            return
        self._server = AgentServer(runtime=self._runtime, host=self.host, port=self.port or 0, capacity=self.capacity,
                                   custom_agent_classes=self.custom_agent_classes, token=self.token,
                                   tls=self.tls, max_message_size=self.max_message_size, grace=self.grace,
                                   **self._registry_options(),
                                   **self.options)
        self.port = self._runtime.run(self._server.start())
        self.server_id = self._server.server_id
        self.metrics_port = self._server.metrics_port
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._stop_async())

    def _tls_options(self) -> dict[str, Any]:
        """What a server process needs to serve TLS and to make its own calls like this process (checked here)."""
        options: dict[str, Any] = self._runtime.process_options()
        options["insecure"] = options["insecure"] or self.insecure
        if self.tls is not None:
            require_dial_ca(self.tls.cert, options["tls_ca"] or self.tls.client_ca)
            options.update(tls_cert=self.tls.cert, tls_key=self.tls.key, tls_client_ca=self.tls.client_ca)
        return options

    def _registry_options(self) -> dict[str, Any]:
        """The server's namespace (always: a token is scoped to it), and its registry if it has one."""
        if not self.registry:
            return {"namespace": self.namespace}
        return {"registry": self.registry, "namespace": self.namespace, "labels": self.labels}

    @property
    def pid(self) -> int:
        return self._process.pid if self._process else os.getpid()

    def _stop_async(self) -> None:
        if self._server is not None:
            self._runtime.loop.spawn(self._server.stop(self.grace))

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
            self._runtime.run(self._server.stop(self.grace))
