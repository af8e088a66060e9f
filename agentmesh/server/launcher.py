"""RpcAgentServerLauncher and the serve loop shared by the CLI and child processes."""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from typing import Any, Callable

from .. import _tls
from .._address import check_port, format_address, is_loopback
from .._config import (DEFAULT_CAPACITY, DEFAULT_MAX_MESSAGE_SIZE, OwnCalls, ServerConfig, Settings, check_capacity,
                       read_secret)
from .._process import ServerProcess
from .._runtime import check_state_store, default_runtime
from ..discovery.records import check_labels
from ..etcd import parse_registry_url
from ._files import FileRoot
from ._service import AgentServer

log = logging.getLogger("agentmesh.server")

#: what RpcAgentServerLauncher(**options) takes into the server's ServerConfig (the rest is AgentScope's, ignored)
_SERVER_OPTIONS = ("max_pending_calls", "result_ttl", "max_results", "max_result_bytes", "session_backlog_bytes",
                   "max_fetch_waiters", "max_classes", "max_class_bytes", "max_workers", "server_id",
                   "allow_shipped_classes", "registry_ttl", "advertise_host", "fence_after", "file_dir", "agent_dir",
                   "metrics_port", "state_store_wait")


def check_exposure(bind_host: str, token: str | None, tls: bool, insecure: bool,
                   tls_client_auth: bool = False) -> None:
    """Refuse to expose a server to the network without TLS, or without authenticating its callers, unless told to.

    On a network (non-loopback) address the traffic needs TLS: in plaintext
    the token and every pickle cross readable and alterable, and callers
    cannot tell this server from an impostor. Callers must also be
    authenticated: by a token, or by mutual TLS (``tls`` with
    ``tls_client_auth``: callers need a certificate from the client CA).
    """
    if is_loopback(bind_host) or (tls and (token or tls_client_auth)):
        return
    if not insecure:
        if tls:
            raise ValueError(
                f"refusing to listen on {bind_host} with TLS but neither a token nor a client CA: TLS without "
                f"client certificates encrypts the traffic, yet anyone who can reach the port could run code "
                f"on this machine. Give token= (--token, AGENTMESH_TOKEN) or tls_client_ca= "
                f"(--tls-client-ca) for mutual TLS, or insecure=True (--insecure) if you really mean it")
        if not token:
            raise ValueError(
                f"refusing to listen on {bind_host} without a token or mutual TLS, and without TLS: anyone who can "
                f"reach it could run code on this machine. Give tls_cert= and tls_key= (--tls-cert, --tls-key) "
                f"with tls_client_ca= (--tls-client-ca) or token= (--token, AGENTMESH_TOKEN), or "
                f"insecure=True (--insecure) if you really mean it")
        raise ValueError(
            f"refusing to listen on {bind_host} without TLS: the token and every call would cross the network in "
            f"plaintext, readable and alterable on the way, and callers could not verify this server. Give "
            f"tls_cert= and tls_key= (--tls-cert, --tls-key), or insecure=True (--insecure) if you really mean it")
    missing = " and without ".join(what for what, absent in (("TLS", not tls), ("a token or mutual TLS", not token))
                           if absent)
    log.warning("INSECURE: agent server listening on %s without %s; anyone who can reach it can %s", bind_host,
                missing, "run code on this machine" if not token else "read and alter its traffic")


def require_dial_ca(cert: str, ca: str | None) -> None:
    """A server process whose own calls present cert needs a CA to verify peers: ValueError naming the remedy."""
    if not ca:
        raise ValueError(
            f"agentmesh server: its own calls (placeholder fetches, proxies inside its agents) present {cert} "
            f"and must verify the servers they reach, which needs the CA their certificates chain to: give "
            f"tls_ca (--tls-ca, AGENTMESH_TLS_CA) or a client CA (tls_client_ca, --tls-client-ca); agentmesh "
            f"never trusts the system's public roots")


def _process_settings(current: Settings, config: ServerConfig) -> dict[str, Any]:
    """The settings of a server process's own calls (placeholder fetches, proxies in agents, etcd).

    Its client certificate is config.own_calls' (a child server's: its
    parent's), else the server's own certificate; peers are verified with its
    tls_ca, else the configured CA, else the client CA, and with a certificate
    but none of those it does not start (ValueError).
    """
    own, tls = config.own_calls or OwnCalls(), config.tls
    options: dict[str, Any] = {name: value for name, value in (("token", own.token), ("etcd_ca", own.etcd_ca),
                                                                 ("etcd_cert", own.etcd_cert),
                                                                 ("etcd_key", own.etcd_key),
                                                                 ("etcd_password", own.etcd_password))
                               if value}
    options["namespace"] = config.namespace        # its own calls are made in its namespace
    registry = config.registry or own.registry
    if registry and not current.registry:   # its own proxies and fetches follow the registry too
        options["registry"] = registry
    cert, key = (own.client_cert, own.client_key) if own.client_cert else (tls.cert, tls.key) if tls else (None, None)
    ca = own.tls_ca or current.tls_ca or (tls.client_ca if tls else None)
    if cert:
        require_dial_ca(cert, ca)
        options.update(tls_cert=cert, tls_key=key)
    if ca:
        options["tls_ca"] = ca
    if own.insecure:
        options["insecure"] = True
    if config.state_store:   # the child servers it starts use its store too
        options["state_store"] = config.state_store
    return options


def serve_forever(config: ServerConfig, *, on_ready: Callable[[int, str, int], None] | None = None,
                  lifeline: Callable[[Callable[[str], None]], None] | None = None) -> int:
    """Serve until SIGTERM, SIGINT or the lifeline says stop; returns the exit code (0 after a drain).

    This process is the server: its own calls are set up from config.own_calls
    (see OwnCalls), and a child server (config.roster) lists its port in its
    parent's roster. on_ready gets the port, the server id and the metrics port
    (0: none) once it listens.
    """
    runtime = default_runtime()   # this process is the server: its runtime serves it
    runtime.configure(**_process_settings(runtime.settings, config))
    server = AgentServer(config, runtime)
    runtime.run(server.start())
    if config.roster is not None:   # its siblings serve the namespace and token it serves
        runtime.children.join(config.roster, server.port, config.namespace, config.token)

    def stop(reason: str, grace: float = config.grace) -> None:
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

    State: ``state_store`` is the URL of the store where agents' state
    outlives processes (``sqlite:///path/state.db`` or
    ``postgresql://user@host:5432/dbname``; default: this process's
    ``state_store`` setting, ``AGENTMESH_STATE_STORE``; ``""``: none). A URL
    the stores cannot use, one carrying a password included, is a ValueError
    naming what is wrong. The PostgreSQL password comes from the file
    ``state_store_password_file`` names (default: the server's
    ``AGENTMESH_STATE_STORE_PASSWORD_FILE``), never from the URL.
    ``state_store_wait`` (s, default 30) bounds how long a durable agent's
    reply waits for its commit while the store does not answer.

    The arguments are checked and built once into ``config``, a ``ServerConfig``.
    """

    def __init__(self, host: str = "localhost", port: int | None = None, capacity: int = DEFAULT_CAPACITY,
                 custom_agent_classes: list[type] | None = None, registry: str | None = None,
                 namespace: str | None = None, labels: dict[str, str] | None = None, token: str | None = None,
                 insecure: bool = False, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 grace: float = 5.0, tls_cert: str | None = None, tls_key: str | None = None,
                 tls_client_ca: str | None = None, token_file: str | None = None, state_store: str | None = None,
                 state_store_password_file: str | None = None, **options: Any) -> None:
        self.host = host
        self.port = check_port(port)   # where it listens, once launched
        capacity = check_capacity(capacity)
        self._runtime = default_runtime()
        settings = self._runtime.settings
        registry = registry if registry is not None else settings.registry
        if registry:
            parse_registry_url(registry)     # a ValueError naming the URL (redacted) before anything starts
        labels = check_labels(labels)     # a ValueError naming the bad label, before anything starts
        state_store = check_state_store(settings.state_store if state_store is None else state_store,
                                        state_store_password_file)   # StoreUrlError naming what is wrong
        if token is not None and token_file is not None:
            raise ValueError("both token= and token_file= were given to RpcAgentServerLauncher; give one")
        token = read_secret(token_file) if token_file is not None else token if token is not None else settings.token
        self.insecure = insecure
        if tls_cert is None and tls_key is None:
            tls_cert, tls_key = settings.tls_cert, settings.tls_key
        tls = _tls.ServerTLS.from_options(tls_cert, tls_key, tls_client_ca)
        kept = {k: v for k, v in options.items() if k in _SERVER_OPTIONS and (k != "server_id" or v)}
        if kept.get("file_dir"):
            kept["file_dir"] = FileRoot(kept["file_dir"]).path   # a ValueError now, not in the child
        ignored = sorted(set(options) - set(_SERVER_OPTIONS))
        if ignored:
            log.debug("RpcAgentServerLauncher: options %s are not used by agentmesh", ignored)
        #: the server's settings, built once; its token is resolved (the one given, else maybe the local one)
        self.config = ServerConfig(bind_host=host, port=self.port or 0, capacity=capacity,
                                   agent_classes=tuple(custom_agent_classes or ()), registry=registry or None,
                                   namespace=namespace or settings.namespace, labels=labels, token=token, tls=tls,
                                   max_message_size=max_message_size, grace=grace, state_store=state_store,
                                   state_store_password_file=state_store_password_file and os.path.abspath(
                                       state_store_password_file), **kept)
        self.server_id = ""
        #: where the server serves /metrics once launched (metrics_port= given; 0 picks a free port), else None
        self.metrics_port: int | None = None
        self._server: AgentServer | None = None
        self._process: ServerProcess | None = None
        #: an in-process server's SIGTERM handler, and the one it replaced (given back once the server stops)
        self._on_sigterm: Callable[..., None] | None = None
        self._sigterm_before: Any = None

    # -- its settings as given, read from its config (the attributes of earlier versions) -------------------
    @property
    def token(self) -> str | None:
        """The token the server holds: the one given (or read from token_file), else possibly this user's own."""
        return self.config.token

    @property
    def namespace(self) -> str:
        return self.config.namespace

    @property
    def registry(self) -> str | None:
        return self.config.registry

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.labels)

    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def custom_agent_classes(self) -> list[type]:
        return list(self.config.agent_classes)

    @property
    def tls(self) -> _tls.ServerTLS | None:
        return self.config.tls

    @property
    def max_message_size(self) -> int:
        return self.config.max_message_size

    @property
    def grace(self) -> float:
        return self.config.grace

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def launch(self, in_subprocess: bool = True) -> None:
        """Start serving; returns once the server listens (self.port is then set)."""
        config = self.config
        check_exposure(self.host, config.token, config.tls is not None, self.insecure,
                       tls_client_auth=config.tls is not None and config.tls.mutual)
        if in_subprocess:
            self._process = ServerProcess(dataclasses.replace(config, own_calls=self._own_calls()))
            self._process.wait_ready()
            self.port = self._process.port
            self.server_id = self._process.server_id
            self.metrics_port = self._process.metrics_port
            return
        self._server = AgentServer(config, self._runtime)
        self.port = self._runtime.run(self._server.start())
        self.server_id = self._server.server_id
        self.metrics_port = self._server.metrics_port
        if threading.current_thread() is threading.main_thread():   # SIGTERM drains it, until it has stopped
            self._on_sigterm = lambda *_: self._stop_async()
            self._sigterm_before = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _own_calls(self) -> OwnCalls:
        """How a server process makes its own calls: as this process does, with the server's token (checked)."""
        options: dict[str, Any] = self._runtime.process_options()
        options["insecure"] = options["insecure"] or self.insecure
        tls = self.config.tls
        if tls is not None:
            require_dial_ca(tls.cert, options["tls_ca"] or tls.client_ca)
        return OwnCalls(token=self.config.token, **options)

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
            self._restore_sigterm()

    def shutdown(self) -> None:
        """Stop the server: running calls finish (up to the grace period), then it exits."""
        if self._process is not None:
            self._process.stop(timeout=self.grace + 5)
        elif self._server is not None:
            self._runtime.run(self._server.stop(self.grace))
            self._restore_sigterm()

    def _restore_sigterm(self) -> None:
        """Give SIGTERM back to whoever had it before launch(), once this in-process server has stopped."""
        if self._on_sigterm is not None and threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) is self._on_sigterm:
            signal.signal(signal.SIGTERM, self._sigterm_before)
        self._on_sigterm = None
