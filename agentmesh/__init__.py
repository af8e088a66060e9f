"""agentmesh: run the agents of one application across processes and machines.

A small public API over private modules; see README.md and docs/.
"""
from ._grpc_tuning import tune_grpc as _tune_grpc

_tune_grpc()   # before anything imports grpc: it reads its configuration once, on import

import os  # noqa: E402
from typing import Any  # noqa: E402

from . import errors  # noqa: E402
from ._config import Settings  # noqa: E402
from ._runtime import default_runtime  # noqa: E402
from ._version import __version__  # noqa: E402
from .agents import AgentBase  # noqa: E402
from .errors import AgentCallError, AgentCreationError  # noqa: E402
from .message import Msg  # noqa: E402
from . import pipelines  # noqa: E402
from .msghub import msghub  # noqa: E402 - agentmesh.msghub is the function, as agentscope.msghub is
from .rpc import AsyncResult, ReplyStream, RpcMeta, RpcObject, async_func, delete_agent, get_agent, sync_func  # noqa: E402
from .server import RpcAgentServerLauncher  # noqa: E402


def init(registry: str | None = None, namespace: str | None = None, token: str | None = None,
         token_file: str | None = None, **options: Any) -> None:
    """Configure this process's runtime: registry URL, namespace, shared token and tuning options.

    With no arguments the ``AGENTMESH_REGISTRY``, ``AGENTMESH_NAMESPACE`` and
    ``AGENTMESH_TOKEN`` (or ``AGENTMESH_TOKEN_FILE``) environment variables
    apply; with none of those, agents go to child servers. An unknown option is
    a TypeError naming it; AgentScope's ``init`` options are accepted (for code
    ported from it) and do nothing. A token must be a key (estimated 128 bits or
    more: ``agentmesh token new``); with none, this user's local token is used.

    Secrets: ``token_file`` names a file holding the token (read once, now;
    its trailing newline stripped), so the token stays out of code and argv;
    give ``token`` or ``token_file``, not both. ``etcd_password_file``
    (``AGENTMESH_ETCD_PASSWORD_FILE``) holds the password of the user named in
    the registry URL (``etcd://USER@host:2379``).

    ``state_store`` (``AGENTMESH_STATE_STORE``): the store of durable agents'
    state, ``sqlite:///path/state.db`` or ``postgresql://user@host/db`` (its
    password in the file ``AGENTMESH_STATE_STORE_PASSWORD_FILE`` names); it
    lets ``to_dist(name=..., lifetime="detached")``, ``get_agent`` and
    ``delete_agent`` work, and child servers use it.

    TLS: ``tls_ca`` (the CA agent servers' certificates chain to), ``tls_cert``
    and ``tls_key`` (this process's certificate, for servers that require
    client certificates); ``etcd_ca``, ``etcd_cert``, ``etcd_key`` for the
    registry. They start from ``AGENTMESH_TLS_CA``/``_CERT``/``_KEY`` and
    ``AGENTMESH_ETCD_CA``/``_CERT``/``_KEY``; a certificate without its key,
    a certificate without ``tls_ca`` (the system's roots are never trusted)
    or an unreadable file is a ValueError. ``insecure=True``
    (``AGENTMESH_INSECURE=1``) allows plaintext to network addresses, which is
    otherwise refused.

    Metrics: ``metrics_port`` serves this process's Prometheus metrics (the
    calls its proxies make, failovers, placements) at
    ``http://127.0.0.1:PORT/metrics``; 0 picks a free port, which
    ``metrics_port()`` tells. The endpoint has no authentication, so it
    listens on loopback unless ``metrics_host`` says otherwise (``"0.0.0.0"``).

    Tracing: ``tracing=True`` (``AGENTMESH_TRACING=1``) traces every call with
    OpenTelemetry (``pip install 'agentmesh[tracing]'``; spans go to the SDK
    the application configures), the trace context carried to the servers.

    Files: ``download_dir`` (``AGENTMESH_DOWNLOAD_DIR``) is where files named
    by replies (``Msg.url`` under a server's ``file_dir``) are copied; default
    ``save_dir``/files when AgentScope's ``save_dir`` is given (the folder is
    made), else a temporary folder per process.

    Code: ``py_modules=[module, ...]`` (modules or their names) ships those
    modules' functions, classes and constants with every class this process
    sends to a server, which then needs no copy of them (``to_dist`` takes it
    too, for one class).
    """
    save_dir = options.get("save_dir")
    if save_dir:   # AgentScope's run folder: made now; files that replies name are copied under it
        os.makedirs(save_dir, exist_ok=True)
        options.setdefault("download_dir", os.path.join(save_dir, "files"))
    runtime = default_runtime()
    env = Settings.from_env()
    if token is None and token_file is None:
        token = env.token
    metrics_port = options.pop("metrics_port", None)
    tracing = options.pop("tracing", None)
    runtime.configure(registry=registry if registry is not None else env.registry,
                      namespace=namespace if namespace is not None else env.namespace,
                      token=token, token_file=token_file, **options)
    if metrics_port is not None:
        runtime.serve_metrics(int(metrics_port))
    if tracing is not None:
        runtime.enable_tracing(bool(tracing))


def metrics_port() -> int | None:
    """The port this process serves its Prometheus metrics on (the first, if several), or None."""
    metrics = default_runtime().metrics
    return metrics.ports[0] if metrics is not None and metrics.ports else None


def shutdown() -> None:
    """Delete the agents this process created, close its sessions and registry views, stop its child servers.

    The same happens at interpreter exit; call it to release servers' capacity
    earlier, or before stopping servers that still host this process's agents
    (so they are not moved elsewhere first). Proxies used afterwards find their
    agent gone (``UnknownAgentError``).
    """
    default_runtime().close()

__all__ = [
    "__version__",
    "init",
    "shutdown",
    "metrics_port",
    "msghub",
    "AgentBase",
    "Msg",
    "RpcObject",
    "get_agent",
    "delete_agent",
    "AsyncResult",
    "ReplyStream",
    "RpcMeta",
    "async_func",
    "sync_func",
    "RpcAgentServerLauncher",
    "AgentCallError",
    "AgentCreationError",
    "errors",
]
