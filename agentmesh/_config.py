"""Process-wide settings: what agentmesh.init() and the AGENTMESH_* variables set."""
from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from typing import Any

log = logging.getLogger("agentmesh")


@dataclasses.dataclass
class Settings:
    """What a process of the mesh uses: registry, namespace, token and tuning."""

    registry: str | None = None
    namespace: str = "default"
    token: str | None = None
    child_servers: int = max(1, min(4, os.cpu_count() or 1))
    child_capacity: int = 10_000
    max_message_size: int = 64 * 1024 * 1024
    connect_timeout: float = 5.0
    registry_timeout: float = 1.5
    tls_ca: str | None = None        # CA that agent servers' certificates must chain to (client side)
    tls_cert: str | None = None      # this process's certificate: client cert for mTLS, server cert by default
    tls_key: str | None = None
    etcd_ca: str | None = None       # etcd client TLS: CA, and client certificate and key for etcd mTLS
    etcd_cert: str | None = None
    etcd_key: str | None = None
    _generated_token: str | None = None

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            registry=os.environ.get("AGENTMESH_REGISTRY") or None,
            namespace=os.environ.get("AGENTMESH_NAMESPACE") or "default",
            token=os.environ.get("AGENTMESH_TOKEN") or None,
            tls_ca=os.environ.get("AGENTMESH_TLS_CA") or None,
            tls_cert=os.environ.get("AGENTMESH_TLS_CERT") or None,
            tls_key=os.environ.get("AGENTMESH_TLS_KEY") or None,
            etcd_ca=os.environ.get("AGENTMESH_ETCD_CA") or None,
            etcd_cert=os.environ.get("AGENTMESH_ETCD_CERT") or None,
            etcd_key=os.environ.get("AGENTMESH_ETCD_KEY") or None,
        )

    def client_token(self) -> str:
        """The token this process sends: the configured one, else one made up for its children."""
        if self.token:
            return self.token
        if self._generated_token is None:
            self._generated_token = secrets.token_urlsafe(32)
        return self._generated_token


settings = Settings.from_env()

_OPTIONS = {f.name for f in dataclasses.fields(Settings) if not f.name.startswith("_")}


def init(registry: str | None = None, namespace: str | None = None, token: str | None = None,
         **options: Any) -> None:
    """Configure this process: registry URL, namespace, shared token and tuning options.

    With no arguments the ``AGENTMESH_REGISTRY``, ``AGENTMESH_NAMESPACE`` and
    ``AGENTMESH_TOKEN`` environment variables apply; with none of those,
    agents go to child servers. Unknown options are accepted (for code written
    for AgentScope's ``init``) and logged at DEBUG.

    TLS: ``tls_ca`` (the CA agent servers' certificates chain to), ``tls_cert``
    and ``tls_key`` (this process's certificate, for servers that require
    client certificates); ``etcd_ca``, ``etcd_cert``, ``etcd_key`` for the
    registry. They start from ``AGENTMESH_TLS_CA``/``_CERT``/``_KEY`` and
    ``AGENTMESH_ETCD_CA``/``_CERT``/``_KEY``; a certificate without its key
    or an unreadable file is a ValueError.
    """
    from ._tls import check_client_settings

    known = {key: value for key, value in options.items() if key in _OPTIONS}
    for key in sorted(set(options) - set(known)):
        log.debug("agentmesh.init: option %r is not used by agentmesh", key)
    tls = {name: known.get(name, getattr(settings, name)) for name in ("tls_ca", "tls_cert", "tls_key")}
    check_client_settings(tls["tls_ca"], tls["tls_cert"], tls["tls_key"])
    etcd_cert, etcd_key = known.get("etcd_cert", settings.etcd_cert), known.get("etcd_key", settings.etcd_key)
    if bool(etcd_cert) != bool(etcd_key):
        raise ValueError("agentmesh.init: give both etcd_cert and etcd_key, or neither")
    env = Settings.from_env()
    settings.registry = registry if registry is not None else env.registry
    settings.namespace = namespace if namespace is not None else env.namespace
    settings.token = token if token is not None else env.token
    for key, value in known.items():
        setattr(settings, key, value)
