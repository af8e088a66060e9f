"""agentmesh's etcd client: a thin asyncio client for the etcd v3 gRPC API.

The only way agentmesh talks to etcd. It runs over ``grpc.aio`` with the
method callables built by hand from etcd's method paths
(``/etcdserverpb.KV/Range`` ...) and our own subset of etcd's messages
(``agentmesh/etcdv3/etcd_pb2``), so the client can be swapped in one place.

What it guarantees, because the registry depends on it:

- Every unary call has a deadline: when no endpoint answers within
  ``timeout`` seconds the call raises :class:`EtcdUnavailable`. Endpoints are
  tried round-robin on ``UNAVAILABLE``/``DEADLINE_EXCEEDED``; nothing is
  banned for minutes, so the client keeps working after etcd restarts.
- With ``user``/``password`` it authenticates, sends the token in the
  ``token`` metadata key, and re-authenticates once when etcd says the token
  is invalid (tokens die when etcd restarts or after ``--auth-token-ttl``).
  Credentials for an etcd that has auth turned off are refused
  (:class:`EtcdAuthDisabled`): such an etcd lets anyone write the registry.
- :class:`Lease` keeps a lease alive in the background (every TTL/3) and
  calls ``on_lost`` once when etcd says it expired or it could not be renewed
  before it would have expired.
- :class:`Watch` resumes after a broken stream from the last delivered
  revision + 1, so no event is missed; if that revision has been compacted
  it yields one ``RESYNC`` event carrying a fresh snapshot of the prefix and
  continues from there.

One module per role: ``_urls`` (registry URLs, :func:`redact_url` for logging
them), ``_errors`` (errors and the mapping of gRPC errors), ``_endpoints``
(channels, rotation, the retry/deadline loop), ``_auth`` (token and its
renewal), ``_lease``, ``_watch``, and ``client`` (:class:`EtcdClient`, which
holds the helpers). TLS credentials come from ``agentmesh._tls``.
"""
from __future__ import annotations

from ._errors import EtcdAuthDisabled, EtcdAuthError, EtcdError, EtcdUnavailable
from ._lease import Lease
from ._urls import DEFAULT_PORT, parse_registry_url, redact_url
from ._watch import Watch, WatchEvent
from .client import EtcdClient, KeyValue, TxnResponse

__all__ = [
    "DEFAULT_PORT",
    "EtcdAuthDisabled",
    "EtcdAuthError",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "KeyValue",
    "Lease",
    "TxnResponse",
    "Watch",
    "WatchEvent",
    "parse_registry_url",
    "redact_url",
]
