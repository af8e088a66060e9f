"""Settings of a process of the mesh: what ``agentmesh.init()`` and the ``AGENTMESH_*`` variables set.

Every environment variable agentmesh reads is named here, once, and so is
every default limit.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

from . import _tls

log = logging.getLogger("agentmesh")

#: the largest message (arguments, result, checkpoint) a call may carry by default
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: agents a launched server accepts when no capacity is given
DEFAULT_CAPACITY = 32
#: agents a child server accepts
DEFAULT_CHILD_CAPACITY = 10_000

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
    "insecure": "AGENTMESH_INSECURE",
}
#: read by the server command only
ENV_TLS_CLIENT_CA = "AGENTMESH_TLS_CLIENT_CA"
ENV_LOG_LEVEL = "AGENTMESH_LOG_LEVEL"


def env(name: str, default: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """An AGENTMESH_* variable; empty counts as unset."""
    return (os.environ if environ is None else environ).get(name) or default


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """An AGENTMESH_* on/off variable: 1/true/yes is on, 0/false/no or unset is off, anything else a ValueError."""
    value = (env(name, "", environ) or "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("", "0", "false", "no"):
        return False
    raise ValueError(f"{name}={value!r} is neither on (1, true, yes) nor off (0, false, no)")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a process of the mesh uses: registry, namespace, token, TLS and tuning."""

    registry: str | None = None
    namespace: str = "default"
    token: str | None = None
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
    #: dial agent servers at network (non-loopback) addresses in plaintext; off: refused, TLS is required
    insecure: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Defaults, overridden by the AGENTMESH_* variables that are set."""
        values: dict[str, Any] = {field: env(name, environ=environ) for field, name in ENVIRONMENT.items()}
        values["namespace"] = values["namespace"] or "default"
        values["insecure"] = env_flag(ENVIRONMENT["insecure"], environ)
        return cls(**values)

    def replace(self, **options: Any) -> "Settings":
        """A copy with the known options changed (checked); unknown ones are logged at DEBUG and ignored."""
        known = {key: value for key, value in options.items() if key in _FIELDS}
        for key in sorted(set(options) - set(known)):
            log.debug("agentmesh: option %r is not used by agentmesh", key)
        updated = dataclasses.replace(self, **known)
        updated.check()
        return updated

    def check(self) -> None:
        """ValueError for a certificate without its key (or the reverse), TLS without a CA, unreadable files."""
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
        return options


_FIELDS = frozenset(field.name for field in dataclasses.fields(Settings))
_PATHS = ("tls_ca", "tls_cert", "tls_key", "etcd_ca", "etcd_cert", "etcd_key")
