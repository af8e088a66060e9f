"""Settings of a process of the mesh: what ``agentmesh.init()`` and the ``AGENTMESH_*`` variables set; and
an agent server's settings (``ServerConfig``), here so that every layer that starts a server can build them.

Every environment variable agentmesh reads is named here, once, and so is
every default limit.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import os
import types
import uuid
from typing import Any, Iterable, Mapping

from . import _tls
from ._address import is_loopback
from ._env import env, env_flag, read_secret
from ._tokens import check_token, local_token

log = logging.getLogger("agentmesh")

#: the largest message (arguments, result, checkpoint) a call may carry by default
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: agents a launched server accepts when no capacity is given: no cap a porting user would meet
#: (AgentScope's capacity sizes a thread pool; ours refuses creations beyond it)
DEFAULT_CAPACITY = 1_000_000
#: agents a child server accepts
DEFAULT_CHILD_CAPACITY = 10_000

# -- a server's budgets: what one server holds at most, whatever its clients do --
#: calls waiting in one agent's mailbox before more are refused (OVERLOADED)
DEFAULT_MAX_PENDING_CALLS = 10_000
#: finished calls' replies kept for replays and placeholder fetches: how many, how long, how many bytes
DEFAULT_MAX_RESULTS = 100_000
DEFAULT_RESULT_TTL = 600.0
DEFAULT_MAX_RESULT_BYTES = 256 * 1024 * 1024
#: reply bytes waiting for one slow client before its session's calls stop being read (backpressure)
DEFAULT_SESSION_BACKLOG_BYTES = 64 * 1024 * 1024
#: FetchResult RPCs waiting at once on one server; beyond it they are refused (OVERLOADED), ~20 KiB each
DEFAULT_MAX_FETCH_WAITERS = 4096
#: classes shipped by clients that a server keeps (least recently used go first): how many, how many bytes
DEFAULT_MAX_CLASSES = 1024
DEFAULT_MAX_CLASS_BYTES = 64 * 1024 * 1024
#: HTTP/2 streams open at once on one connection: above the fetch waiter cap, so that cap answers first
DEFAULT_MAX_CONCURRENT_STREAMS = 2 * DEFAULT_MAX_FETCH_WAITERS
#: a connection with no open stream (no session, no health watch) is closed after this long
DEFAULT_CONNECTION_IDLE_S = 300.0
#: worker threads that run a server's agents' calls, at most
DEFAULT_MAX_WORKERS = 512
#: how long a durable agent's reply waits for its commit while the state store does not answer, before the
#: call fails with StoreUnavailableError (s); what was written is kept, and the state is committed later
DEFAULT_STATE_STORE_WAIT = 30.0

#: Settings field -> the environment variable that gives its default
ENVIRONMENT = {
    "registry": "AGENTMESH_REGISTRY",
    "namespace": "AGENTMESH_NAMESPACE",
    "token": "AGENTMESH_TOKEN",
    "tls_ca": "AGENTMESH_TLS_CA",
    "tls_cert": "AGENTMESH_TLS_CERT",
    "tls_key": "AGENTMESH_TLS_KEY",
    "etcd_ca": "AGENTMESH_ETCD_CA",
    "etcd_cert": "AGENTMESH_ETCD_CERT",
    "etcd_key": "AGENTMESH_ETCD_KEY",
    "token_file": "AGENTMESH_TOKEN_FILE",
    "etcd_password_file": "AGENTMESH_ETCD_PASSWORD_FILE",
    "insecure": "AGENTMESH_INSECURE",
    "download_dir": "AGENTMESH_DOWNLOAD_DIR",
    "state_store": "AGENTMESH_STATE_STORE",
}
ENV_STATE_STORE_PASSWORD_FILE = "AGENTMESH_STATE_STORE_PASSWORD_FILE"  # the state store's password, in a file
#: read by the server command only
ENV_TLS_CLIENT_CA = "AGENTMESH_TLS_CLIENT_CA"
ENV_LOG_LEVEL = "AGENTMESH_LOG_LEVEL"


def check_state_store_wait(seconds: object, what: str = "state_store_wait") -> float:
    """How long a durable agent's reply may wait for its commit, checked: more than 0 and at most a day."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 86_400:
        raise ValueError(f"{what} must be more than 0 and at most 86400 seconds, not {seconds!r}")
    return float(seconds)


def check_capacity(capacity: object, what: str = "capacity") -> int:
    """The number of agents a server accepts, checked: a positive int, else a ValueError naming the value."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"{what} {capacity!r} is not a positive number of agents (leave it out for "
                         f"{DEFAULT_CAPACITY:,})")
    return capacity


def check_options(given: Iterable[str], accepted: Iterable[str], kept: Iterable[str], what: str) -> None:
    """TypeError naming each unknown option of given (with its close match: a typo) and the accepted ones.

    kept: AgentScope's options of the same call, accepted for code ported from it.
    """
    accepted, kept = sorted(accepted), sorted(kept)
    unknown = sorted(set(given) - set(accepted) - set(kept))
    if not unknown:
        return
    names = []
    for name in unknown:
        close = difflib.get_close_matches(name, accepted + kept, n=1)
        names.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{what} got unknown option{'s' if len(unknown) > 1 else ''} {', '.join(names)}; it "
                    f"accepts {', '.join(accepted)}, and AgentScope's {', '.join(kept)} (kept for porting)")


def check_py_modules(modules: object, what: str) -> tuple[str, ...]:
    """The names of the modules given as py_modules= (a list of modules, or of names of modules importable
    here), checked: a TypeError or ValueError naming what is wrong. Their code is shipped with the classes."""
    if modules is None:
        return ()
    if not isinstance(modules, (list, tuple)):
        raise TypeError(f"{what}: py_modules takes a list of modules (or of their names), not {modules!r}")
    names: list[str] = []
    for module in modules:
        if isinstance(module, str):
            try:
                module = importlib.import_module(module)
            except ImportError as exc:
                raise ValueError(f"{what}: py_modules names a module that cannot be imported here: {exc}") from None
        if not isinstance(module, types.ModuleType):
            raise TypeError(f"{what}: py_modules holds {module!r}, which is neither a module nor a module's name")
        if module.__name__ not in names:
            names.append(module.__name__)
    return tuple(names)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a process of the mesh uses: registry, namespace, token, TLS and tuning."""

    registry: str | None = None
    namespace: str = "default"
    token: str | None = dataclasses.field(default=None, repr=False)
    child_servers: int = max(1, min(4, os.cpu_count() or 1))
    child_capacity: int = DEFAULT_CHILD_CAPACITY
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    connect_timeout: float = 5.0
    registry_timeout: float = 1.5
    tls_ca: str | None = None        # CA that agent servers' certificates must chain to (client side)
    tls_cert: str | None = None      # this process's certificate: client cert for mTLS, server cert by default
    tls_key: str | None = None
    etcd_ca: str | None = None       # etcd client TLS: CA, and client certificate and key for etcd mTLS
    etcd_cert: str | None = None
    etcd_key: str | None = None
    etcd_password: str | None = dataclasses.field(default=None, repr=False)  # of the registry URL's user
    #: dial agent servers at network (non-loopback) addresses in plaintext; off: refused, TLS is required
    insecure: bool = False
    #: where files a reply's Msg.url names on its server are copied; None: a new temporary folder per process
    download_dir: str | None = None
    #: where a client process serves /metrics (metrics_port=): loopback, as it has no authentication
    metrics_host: str = "127.0.0.1"
    #: modules (by name) whose code travels with every class shipped to a server (py_modules=)
    py_modules: tuple[str, ...] = ()
    #: the URL of the store where agents' state outlives processes (checked by the runtime; never a password)
    state_store: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Defaults, overridden by the AGENTMESH_* variables that are set (secret files read now)."""
        values: dict[str, Any] = {field: env(name, environ=environ) for field, name in ENVIRONMENT.items()}
        values["namespace"] = values["namespace"] or "default"
        values["insecure"] = env_flag(ENVIRONMENT["insecure"], environ)
        return cls(**_read_secret_files(values, from_env=True))

    def replace(self, **options: Any) -> "Settings":
        """A copy with the known options changed (checked); an unknown one is a TypeError naming it, and
        AgentScope's ``init`` options (kept for porting) are logged at DEBUG and ignored.

        The options ``token_file`` and ``etcd_password_file`` are files read
        now, once, into ``token`` and ``etcd_password``; only the secret is kept.
        """
        check_options(options, _FIELDS | INIT_ONLY_OPTIONS, AGENTSCOPE_INIT_OPTIONS, "agentmesh.init()")
        known = {key: value for key, value in options.items() if key in _FIELDS}
        if "py_modules" in known:
            known["py_modules"] = check_py_modules(known["py_modules"], "agentmesh.init()")
        for key in sorted(set(options) - set(known)):
            log.debug("agentmesh: option %r is not used by agentmesh", key)
        updated = dataclasses.replace(self, **_read_secret_files(known, from_env=False))
        updated.check()
        return updated

    def check(self) -> None:
        """ValueError for a registry without a token, a certificate without its key (or the reverse), TLS
        without a CA, unreadable files."""
        check_token(self.token, "this process (token=, --token(-file), AGENTMESH_TOKEN(_FILE))")
        if self.registry and not self.token:
            raise ValueError("agentmesh: a registry (registry=, AGENTMESH_REGISTRY) needs the namespace token "
                             "(token=, AGENTMESH_TOKEN_FILE or AGENTMESH_TOKEN): registry records are signed with "
                             "it and records that do not verify are ignored")
        _tls.require_pair(self.tls_cert, self.tls_key, "tls_cert and tls_key (AGENTMESH_TLS_CERT and "
                                                       "AGENTMESH_TLS_KEY) for a client certificate")
        _tls.require_pair(self.etcd_cert, self.etcd_key, "etcd_cert and etcd_key (--etcd-cert and --etcd-key, "
                                                         "AGENTMESH_ETCD_CERT and AGENTMESH_ETCD_KEY) for an "
                                                         "etcd client certificate")
        if self.tls_cert and not self.tls_ca:
            raise ValueError(f"agentmesh TLS: a client certificate (tls_cert={self.tls_cert}) needs tls_ca "
                             f"(AGENTMESH_TLS_CA), the CA that agent servers' certificates must chain to: "
                             f"agentmesh never trusts the system's public roots for agent servers")
        for path, what in ((self.tls_ca, "CA certificate"), (self.tls_cert, "certificate"),
                           (self.tls_key, "private key")):
            if path:
                _tls.read_pem(path, what)

    @property
    def client_tls(self) -> bool:
        """True when this process's calls to agent servers use TLS."""
        return bool(self.tls_ca or self.tls_cert)

    def absolute(self) -> "Settings":
        """The same settings with file paths made absolute, for a server process started elsewhere."""
        return dataclasses.replace(self, **{name: os.path.abspath(getattr(self, name))
                                            for name in _PATHS if getattr(self, name)})

    def etcd_options(self) -> dict[str, Any]:
        """Keyword arguments for the etcd client: a CA or a client certificate turns TLS on."""
        options: dict[str, Any] = {}
        if self.etcd_ca:
            options["ca_cert"] = self.etcd_ca
        if self.etcd_cert:
            options["cert"], options["key"] = self.etcd_cert, self.etcd_key
        if self.etcd_password:
            options["password"] = self.etcd_password
        return options


#: option naming a file -> (the Settings field it is read into, what it is called in messages)
_SECRET_FILES = {"token_file": ("token", "token file"), "etcd_password_file": ("etcd_password", "etcd password file")}
_FIELDS = frozenset(field.name for field in dataclasses.fields(Settings)) | frozenset(_SECRET_FILES)
#: options agentmesh.init() takes itself, beside the settings
INIT_ONLY_OPTIONS = frozenset({"metrics_port", "tracing"})
#: AgentScope 0.1.6's init() options: accepted for ported code, unused but save_dir (files go under it)
AGENTSCOPE_INIT_OPTIONS = frozenset({"model_configs", "project", "name", "disable_saving", "save_dir", "save_log",
                                     "save_code", "save_api_invoke", "cache_dir", "use_monitor", "logger_level",
                                     "runtime_id", "agent_configs", "studio_url"})
_PATHS = ("tls_ca", "tls_cert", "tls_key", "etcd_ca", "etcd_cert", "etcd_key")


def _read_secret_files(values: dict[str, Any], from_env: bool) -> dict[str, Any]:
    """Options with each secret file read into its field (and the file option gone); ValueError if given both ways."""
    values = dict(values)
    for option, (field, what) in _SECRET_FILES.items():
        path = values.pop(option, None)
        if path and values.get(field):
            names = (f"{ENVIRONMENT.get(field, field)} and {ENVIRONMENT[option]}" if from_env
                     else f"{field}= and {option}=")
            raise ValueError(f"both {names} are set; give one of them (the {what} is better: it keeps the "
                             f"secret out of argv, the environment and shell history)")
        if path:
            values[field] = read_secret(path, what)
    return values


def server_token(token: str | None, bind_host: str, mutual_tls: bool, registry: str | None) -> str | None:
    """The token a server holds: the one given (checked to be a key), else on loopback, without mutual TLS or
    a registry, this user's local token, so only this user's processes may call it; else None."""
    check_token(token, "the agent server (token=, --token-file, AGENTMESH_TOKEN_FILE)")
    if token is None and is_loopback(bind_host) and not mutual_tls and not registry:
        return local_token()
    return token


@dataclasses.dataclass(frozen=True)
class OwnCalls:
    """How a server process makes its own calls (placeholder fetches, proxies inside its agents, etcd)."""

    token: str | None = dataclasses.field(default=None, repr=False)   # what they present (a child's: its parent's)
    registry: str | None = None        # what they follow besides the server's own (a child's: its parent's)
    tls_ca: str | None = None          # the CA peers' certificates chain to
    client_cert: str | None = None     # their client certificate (default: the server's own certificate)
    client_key: str | None = None
    insecure: bool = False             # they may use plaintext to network addresses
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    etcd_password: str | None = dataclasses.field(default=None, repr=False)   # of the registry URL's user


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Every setting of one agent server, built once (by the CLI, the launcher, child mode); its secrets stay
    out of its repr. The token is resolved when it is built (``server_token``)."""

    bind_host: str = "127.0.0.1"            # the address it listens on
    port: int = 0                           # 0: a free port
    advertise_host: str | None = None       # the host others dial (default: bind_host, or this machine's address)
    capacity: int = DEFAULT_CAPACITY
    server_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    namespace: str = "default"
    token: str | None = dataclasses.field(default=None, repr=False)
    tls: _tls.ServerTLS | None = None       # serve TLS (mutual with a client CA); None: plaintext
    registry: str | None = None             # the registry it registers in
    registry_ttl: int = 3
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    agent_classes: tuple[type, ...] = ()
    agent_dir: str | None = None            # its .py files' agent classes are hosted too
    allow_shipped_classes: bool = True
    file_dir: str | None = None             # what DownloadFile may serve
    metrics_port: int | None = None         # None: no /metrics; 0: a free port
    grace: float = 5.0                      # how long running calls may take when a caller stops the server
    fence_after: float = 1.5                # a gap this long (s) in its run is checked: was it stopped?
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_pending_calls: int = DEFAULT_MAX_PENDING_CALLS
    result_ttl: float = DEFAULT_RESULT_TTL
    max_results: int = DEFAULT_MAX_RESULTS
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    session_backlog_bytes: int = DEFAULT_SESSION_BACKLOG_BYTES
    max_fetch_waiters: int = DEFAULT_MAX_FETCH_WAITERS
    max_classes: int = DEFAULT_MAX_CLASSES
    max_class_bytes: int = DEFAULT_MAX_CLASS_BYTES
    max_workers: int = DEFAULT_MAX_WORKERS
    roster: str | None = None               # a child server's: its parent's list of children, where it adds its port
    own_calls: OwnCalls | None = None       # how a server process makes its own calls (in-process: unused)
    state_store: str | None = None          # the URL of its state store (checked where it is built); None: none
    state_store_password_file: str | None = None   # a file holding the store's password (never the password)
    state_store_wait: float = DEFAULT_STATE_STORE_WAIT   # how long a reply waits for its commit (store away)

    def __post_init__(self) -> None:
        check_state_store_wait(self.state_store_wait, "agentmesh: state_store_wait")
        mutual = self.tls is not None and self.tls.mutual
        object.__setattr__(self, "token", server_token(self.token, self.bind_host, mutual, self.registry))
