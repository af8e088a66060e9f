"""The Runtime: everything one process holds in the mesh, on one object.

Settings, the I/O loop thread, the sessions to servers, the class cache, its
registry views, its child servers, and the state rooms above keep on it in
its extension slot (the relocation wing's: the agents this process created,
its moves). The process has one default runtime (the handle below): ``agentmesh.init()``
configures it and ``agentmesh.shutdown()`` closes it. Nothing else of
agentmesh keeps state at module level.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import secrets
import threading
import urllib.parse
from typing import Any

from . import _ids, _trust
from ._class_cache import ClassCache
from ._client.children import ChildPool
from ._client.dialing import Dialing
from ._client.files import Downloads
from ._client.pool import Pool
from ._config import OwnCalls, ServerConfig, Settings
from ._loop import IoLoop
from ._metrics import Metrics
from ._tracing import Tracing
from .discovery import ServerView
from .etcd import parse_registry_url

log = logging.getLogger("agentmesh")


class Runtime:
    """One process's share of the mesh; made on first use, configured by ``agentmesh.init()``."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.settings.check()
        check_state_store(self.settings.state_store)   # AGENTMESH_STATE_STORE: refused at start, named
        self._generated_token = secrets.token_urlsafe(32)
        self.loop = IoLoop()
        self.classes = ClassCache()
        self.children = ChildPool(self._child_config, lambda: self.settings.child_servers,
                                  lambda: (self.settings.namespace, self.token))
        self.pool = Pool(self.loop, self._dialing())
        #: this process's Prometheus metrics; None until serve_metrics() (nothing is recorded while off)
        self.metrics: Metrics | None = None
        #: OpenTelemetry tracing of calls; None while off (AGENTMESH_TRACING=1 or enable_tracing() turn it on)
        self.tracing: Tracing | None = Tracing() if os.environ.get("AGENTMESH_TRACING", "") not in ("", "0") \
            else None
        #: where files named by replies are copied
        self.downloads = Downloads()
        #: state the rooms above keep per runtime, by name, each made by its room on first use (the relocation
        #: wing's: agents owned, evacuations, the move log); one may define live_metrics() -> its metrics
        #: families and async close(), awaited on the I/O loop when the runtime closes
        self.extensions: dict[str, Any] = {}
        self._views: dict[tuple[str, str], ServerView] = {}
        self._call_prefix = secrets.token_hex(6) + "-"
        self._call_numbers = itertools.count(1)
        self._apply()
        atexit.register(self._at_exit)

    # -- settings ------------------------------------------------------------
    def configure(self, **options: Any) -> None:
        """Change settings (an unknown option is a TypeError naming it); sessions opened from now on use them."""
        settings = self.settings.replace(**options)
        if settings.registry:
            parse_registry_url(settings.registry)   # a clear ValueError now (nothing changed), not a hang later
        check_state_store(settings.state_store)     # StoreUrlError naming what is wrong, nothing changed
        self.settings = settings
        self._apply()

    def _apply(self) -> None:
        self.pool.dialing = self._dialing()
        self.pool.locator = self.locate if self.settings.registry else None

    @property
    def token(self) -> str:
        """The token child servers of this process hold: the configured one, else one made up for them."""
        return self.settings.token or self._generated_token

    def _dialing(self) -> Dialing:
        s = self.settings
        return Dialing(token=s.token, max_message_size=s.max_message_size, connect_timeout=s.connect_timeout,
                       tls_ca=s.tls_ca, tls_cert=s.tls_cert, tls_key=s.tls_key,
                       plaintext=self.children.is_plaintext, insecure=s.insecure, namespace=s.namespace,
                       child_credentials=self.children.credentials_of)

    def _child_config(self) -> ServerConfig:
        """How to start a child server: loopback, plaintext, this runtime's token; its own calls like ours.

        A child serves no certificate (this process's may be a client-only one):
        it lists its port in the pool's roster, so this process and its other
        children dial it in plaintext, and dials everyone else as we do, with
        our CA and our certificate as its client certificate. Its own calls
        follow our registry (it does not register there) with our token and etcd
        credentials, whether our settings came from init() or the environment.
        It uses our state store (its password file comes in the environment).
        """
        s = self.settings.absolute()
        cert, key = (s.tls_cert, s.tls_key) if s.tls_cert and s.tls_key else (None, None)
        return ServerConfig(bind_host="127.0.0.1", capacity=s.child_capacity, token=self.token, namespace=s.namespace,
                            max_message_size=s.max_message_size, roster=self.children.roster(),
                            state_store=check_state_store(s.state_store),
                            own_calls=OwnCalls(token=s.token, registry=s.registry, client_cert=cert, client_key=key,
                                               **self.process_options()))

    def process_options(self) -> dict[str, Any]:
        """What a server process started from here needs to make its own calls like this process."""
        s = self.settings.absolute()
        return {"tls_ca": s.tls_ca, "insecure": s.insecure, "etcd_ca": s.etcd_ca, "etcd_cert": s.etcd_cert,
                "etcd_key": s.etcd_key, "etcd_password": s.etcd_password}

    # -- metrics -------------------------------------------------------------
    def serve_metrics(self, port: int = 0, host: str | None = None) -> int:
        """Turn metrics on (once) and serve them at http://host:port/metrics (0: a free port); the port.

        host None: the metrics_host setting, loopback unless set (the endpoint has no authentication).
        """
        if host is None:
            host = self.settings.metrics_host
        if self.metrics is None:
            metrics = Metrics()
            metrics.add_source(self._live_metrics)
            self.metrics = metrics
            self.pool.record_into(metrics)
        return self.metrics.serve(port, host)

    def enable_tracing(self, on: bool = True) -> None:
        """Trace calls with OpenTelemetry (the API must be installed; spans go to its configured SDK)."""
        self.tracing = (self.tracing or Tracing()) if on else None

    def stop_metrics(self) -> None:
        """Stop serving metrics and recording them (sessions open now stop too)."""
        metrics, self.metrics = self.metrics, None
        self.pool.metrics = None
        for conn in self.pool.open_sessions():
            conn.metrics = None
        if metrics is not None:
            metrics.close()

    def _live_metrics(self) -> dict:
        families = {"agentmesh_client_sessions": ("Sessions this process has open to agent servers", "gauge",
                                                  [({}, float(self.pool.sessions()))])}
        for extension in list(self.extensions.values()):
            if hasattr(extension, "live_metrics"):
                families.update(extension.live_metrics())
        return families

    # -- calls ---------------------------------------------------------------
    def next_call_id(self) -> str:
        """A call id unique across the mesh: a random prefix of this runtime and a counter; inside an agent
        method running on a server, derived from that call's id (see _ids.derived_call_id)."""
        return _ids.derived_call_id() or self._call_prefix + str(next(self._call_numbers))

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine on the I/O loop and wait for it (from a user thread)."""
        return self.loop.run(coro, timeout)

    # -- registry ------------------------------------------------------------
    def view(self, url: str, namespace: str) -> ServerView:
        """This runtime's watch-backed view of the servers of namespace in the registry at url."""
        view = self._views.get((url, namespace))
        if view is None:
            token = self.settings.token
            view = self._views[(url, namespace)] = ServerView(
                url, namespace, self.settings.registry_timeout, self.settings.etcd_options(),
                on_server_gone=self.pool.server_gone, key=_trust.namespace_key(token, namespace) if token else None)
        return view

    def started_view(self, url: str, namespace: str) -> ServerView | None:
        """The view of that registry and namespace if this runtime already follows it (never starts one)."""
        view = self._views.get((url, namespace))
        return view if view is not None and view.ready else None

    async def locate(self, agent_id: str, avoid: str = "", timeout: float = 10.0,
                     avoid_server: str = "") -> tuple[str, str] | None:
        """(server_id, address) of agent_id per its signed registry record, waiting up to timeout to leave the
        address avoid and the server avoid_server; EtcdError when the registry cannot be read."""
        if not self.settings.registry:
            return None
        view = self.view(self.settings.registry, self.settings.namespace)
        return await view.locate(agent_id, avoid, timeout, avoid_server)

    # -- the end ---------------------------------------------------------------
    def close(self) -> None:
        """Close its extensions (which deletes the agents this runtime created), its sessions and views, and
        stop its child servers.

        The runtime stays usable: what is used afterwards starts again. Every
        step has its own bound (a server that does not answer is given up on),
        so there is no overall timeout for a large number of agents to trip over.
        """
        if self.loop.started:
            views, self._views = list(self._views.values()), {}
            try:
                self.loop.run(self._close(list(self.extensions.values()), views))
            except Exception:  # noqa: BLE001 - clean-up must go on
                log.debug("closing the runtime did not finish", exc_info=True)
        self.children.stop()
        if self.metrics is not None:
            self.metrics.close()

    async def _close(self, extensions: list[Any], views: list[ServerView]) -> None:
        for extension in extensions:
            if hasattr(extension, "close"):
                await extension.close()
        for view in views:
            await view.close()
        await self.pool.close()

    def _at_exit(self) -> None:
        self.close()
        self.loop.stop()


def check_state_store(url: str | None, password_file: str | None = None) -> str | None:
    """A state store URL (and password file) checked before anything starts; None or "" stays None.

    StoreUrlError (a ValueError) names what is wrong without the password: a
    URL the stores cannot use (one carrying a password among them), a
    password file that is missing, one with a SQLite store, or one without a
    store. Returns the URL as a server process anywhere reads it: a relative
    SQLite path is made absolute.
    """
    if not url:
        if password_file:
            from .store import StoreUrlError
            raise StoreUrlError(f"a state store password file ({password_file}) was given without a state store "
                                f"URL; give one (--state-store, state_store=, AGENTMESH_STATE_STORE)")
        return None
    from .store import StoreUrlError, parse_store_url   # here: importing agentmesh needs no store
    parsed = parse_store_url(url)
    if password_file and parsed.kind == "sqlite":
        raise StoreUrlError(f"state store {parsed.shown} is a SQLite file: it takes no password file "
                            f"({password_file})")
    if password_file and not os.path.isfile(password_file):
        raise StoreUrlError(f"state store password file {password_file!r} is not a file; give the path of a "
                            f"0600 file holding the password on one line")
    if parsed.kind == "sqlite" and not url.strip().partition(":")[2].startswith("//"):
        return "sqlite://" + urllib.parse.quote(parsed.path) + (
            "?" + urllib.parse.urlencode(parsed.options) if parsed.options else "")
    return url


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The process's default runtime, made on first use."""
    global _default
    runtime = _default
    if runtime is None:
        with _default_lock:
            if _default is None:
                _default = Runtime()
            runtime = _default
    return runtime


def set_default_runtime(runtime: Runtime | None) -> Runtime | None:
    """Make runtime the default (None: make a new one on next use); returns the previous one."""
    global _default
    with _default_lock:
        previous, _default = _default, runtime
    return previous
