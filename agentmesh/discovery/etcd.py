"""The one module through which agentmesh talks to etcd (v3 gRPC API, asyncio).

A thin client over ``grpc.aio`` with the method callables built by hand from
etcd's method paths (``/etcdserverpb.KV/Range`` ...) and our own subset of
etcd's messages (``agentmesh/etcdv3/etcd_pb2``). Keeping every etcd call in
this file means the client can be swapped in one place.

What it guarantees, because the registry depends on it:

- Every unary call has a deadline: when no endpoint answers within
  ``timeout`` seconds the call raises :class:`EtcdUnavailable`. Endpoints are
  tried round-robin on ``UNAVAILABLE``/``DEADLINE_EXCEEDED``; nothing is
  banned for minutes, so the client keeps working after etcd restarts.
- With ``user``/``password`` it authenticates, sends the token in the
  ``token`` metadata key, and re-authenticates once when etcd says the token
  is invalid (tokens die when etcd restarts or after ``--auth-token-ttl``).
- :class:`Lease` keeps a lease alive in the background (every TTL/3) and
  calls ``on_lost`` once when etcd says it expired or it could not be renewed
  before it would have expired.
- :class:`Watch` resumes after a broken stream from the last delivered
  revision + 1, so no event is missed; if that revision has been compacted
  it yields one ``RESYNC`` event carrying a fresh snapshot of the prefix and
  continues from there.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

import grpc

from agentmesh.errors import RegistryError
from agentmesh.etcdv3 import etcd_pb2 as pb

log = logging.getLogger("agentmesh.etcd")

KeyValue = pb.KeyValue
TxnResponse = pb.TxnResponse
T = TypeVar("T")

DEFAULT_PORT = 2379

# name -> (method path, request type, response type)
_UNARY = {
    "Range": ("/etcdserverpb.KV/Range", pb.RangeRequest, pb.RangeResponse),
    "Put": ("/etcdserverpb.KV/Put", pb.PutRequest, pb.PutResponse),
    "DeleteRange": ("/etcdserverpb.KV/DeleteRange", pb.DeleteRangeRequest, pb.DeleteRangeResponse),
    "Txn": ("/etcdserverpb.KV/Txn", pb.TxnRequest, pb.TxnResponse),
    "Compact": ("/etcdserverpb.KV/Compact", pb.CompactionRequest, pb.CompactionResponse),
    "LeaseGrant": ("/etcdserverpb.Lease/LeaseGrant", pb.LeaseGrantRequest, pb.LeaseGrantResponse),
    "LeaseRevoke": ("/etcdserverpb.Lease/LeaseRevoke", pb.LeaseRevokeRequest, pb.LeaseRevokeResponse),
    "LeaseTimeToLive": ("/etcdserverpb.Lease/LeaseTimeToLive", pb.LeaseTimeToLiveRequest,
                        pb.LeaseTimeToLiveResponse),
    "Authenticate": ("/etcdserverpb.Auth/Authenticate", pb.AuthenticateRequest,
                     pb.AuthenticateResponse),
    "Status": ("/etcdserverpb.Maintenance/Status", pb.StatusRequest, pb.StatusResponse),
}
_STREAMS = {
    "Watch": ("/etcdserverpb.Watch/Watch", pb.WatchRequest, pb.WatchResponse),
    "LeaseKeepAlive": ("/etcdserverpb.Lease/LeaseKeepAlive", pb.LeaseKeepAliveRequest,
                       pb.LeaseKeepAliveResponse),
}

_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# etcd's texts for a token that must be renewed (ErrGRPCInvalidAuthToken,
# ErrGRPCAuthOldRevision), and for a request sent without one.
_TOKEN_ERRORS = ("invalid auth token", "auth store is old", "auth-old-revision",
                 "user name is empty")
_AUTH_ERRORS = _TOKEN_ERRORS + ("authentication failed", "permission denied",
                                "user name not found", "invalid user id or password")

_CHANNEL_OPTIONS = (
    # Notice a restarted etcd within ~0.1-1 s rather than gRPC's default 1-120 s.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Notice a dead peer under a long-lived watch; etcd accepts pings >= 5 s apart.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)


class EtcdError(RegistryError):
    """etcd refused or failed a request; ``code`` is the gRPC status code if any."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered within the client's timeout."""


class EtcdAuthError(EtcdError):
    """etcd refused the credentials, or requires some and none were given."""


class _StreamBroken(Exception):
    """A stream ended or stopped answering; reopen it (on the next endpoint)."""


# --------------------------------------------------------------------------
# URLs and endpoints


def parse_registry_url(url: str) -> dict:
    """Split ``etcd[s]://[user:password@]h1:2379,h2:2379`` into client settings.

    Returns ``{"endpoints": ["h1:2379", ...], "tls": bool, "user": str|None,
    "password": str|None}``. ``etcds://`` (or ``https://``) means TLS; a host
    without a port gets 2379; user and password may be percent-encoded.
    """
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("etcd", "etcds", "http", "https"):
        raise ValueError(f"registry URL {url!r}: expected etcd://host:port[,host:port...] "
                         "or etcds://... for TLS")
    netloc, _, path = rest.partition("/")
    if path.strip("/") or "?" in netloc or "#" in netloc:
        raise ValueError(f"registry URL {url!r}: no path or query is allowed after the hosts")
    user = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        name, has_pw, secret = userinfo.partition(":")
        user = urllib.parse.unquote(name) or None
        password = urllib.parse.unquote(secret) if has_pw else None
    endpoints = [_with_port(h.strip(), url) for h in netloc.split(",") if h.strip()]
    if not endpoints:
        raise ValueError(f"registry URL {url!r} names no host")
    return {"endpoints": endpoints, "tls": scheme in ("etcds", "https"),
            "user": user, "password": password}


def _with_port(host: str, url: str) -> str:
    """``host`` -> ``host:2379``; checks the port is a number."""
    if host.startswith("["):
        addr, _, port = host[1:].partition("]")
        port = port.lstrip(":")
        hostpart = f"[{addr}]"
    elif host.count(":") == 1:
        hostpart, _, port = host.partition(":")
    elif ":" in host:
        raise ValueError(f"registry URL {url!r}: write IPv6 addresses as [addr]:port")
    else:
        hostpart, port = host, ""
    if not port:
        port = str(DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536 or not hostpart:
        raise ValueError(f"registry URL {url!r}: bad endpoint {host!r}")
    return f"{hostpart}:{port}"


def _normalize_endpoints(endpoints: Sequence[str] | str) -> tuple[list[str], bool]:
    """Endpoints as ``host:port`` strings, and whether any of them asked for TLS."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    result: list[str] = []
    tls = False
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "://" in item:
            parsed = parse_registry_url(item)
            tls = tls or parsed["tls"]
            result.extend(parsed["endpoints"])
        else:
            result.append(_with_port(item, item))
    if not result:
        raise ValueError("EtcdClient needs at least one endpoint")
    return result, tls


def _prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # empty prefix (or all 0xff): every key


def _b(data: bytes | str) -> bytes:
    """UTF-8 encode str; pass bytes through."""
    return data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)


def _s(data: bytes) -> str:
    """Decode a key (lossless for any bytes)."""
    return data.decode("utf-8", "surrogateescape")


def _read_pem(value: bytes | str | os.PathLike | None) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as fh:
        return fh.read()


def _translate(what: str, err: grpc.aio.AioRpcError) -> EtcdError:
    """An etcd gRPC error as an EtcdError (EtcdAuthError for auth refusals)."""
    details = err.details() or ""
    code = err.code()
    message = f"etcd {what} failed: {details or code.name} ({code.name})"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
            text in details.lower() for text in _AUTH_ERRORS):
        return EtcdAuthError(message, code)
    return EtcdError(message, code)


def _is_token_error(err: grpc.aio.AioRpcError) -> bool:
    """Whether a fresh token may fix this error."""
    details = (err.details() or "").lower()
    return any(text in details for text in _TOKEN_ERRORS)


# --------------------------------------------------------------------------
# Client


class _Conn:
    """One endpoint's channel and its method callables, made on first use."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.methods: dict[str, Any] = {}

    def method(self, name: str) -> Any:
        """The callable for ``name`` (unary or stream-stream)."""
        callable_ = self.methods.get(name)
        if callable_ is None:
            if name in _UNARY:
                path, req, resp = _UNARY[name]
                make = self.channel.unary_unary
            else:
                path, req, resp = _STREAMS[name]
                make = self.channel.stream_stream
            callable_ = make(path, request_serializer=req.SerializeToString,
                             response_deserializer=resp.FromString)
            self.methods[name] = callable_
        return callable_


class EtcdClient:
    """An asyncio client for etcd v3 over gRPC, with failover, auth and TLS.

    Construct it anywhere; channels are opened lazily inside the running
    event loop (and re-opened if it is later used from another loop).
    """

    def __init__(self, endpoints: list[str] | str, *, user: str | None = None,
                 password: str | None = None, ca_cert: bytes | str | os.PathLike | None = None,
                 cert: bytes | str | os.PathLike | None = None,
                 key: bytes | str | os.PathLike | None = None, tls: bool = False,
                 timeout: float = 2.0) -> None:
        self.endpoints, url_tls = _normalize_endpoints(endpoints)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if (cert is None) != (key is None):
            raise ValueError("give both cert and key for a client certificate, or neither")
        self.timeout = float(timeout)
        self.tls = bool(tls or url_tls or ca_cert is not None or cert is not None)
        self._user = user
        self._password = password or ""
        self._credentials = None
        if self.tls:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(ca_cert), private_key=_read_pem(key),
                certificate_chain=_read_pem(cert))
        self._idx = 0
        self._token: str | None = None if user else ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: dict[int, _Conn] = {}
        self._auth_lock: asyncio.Lock | None = None
        self._watches: weakref.WeakSet[Watch] = weakref.WeakSet()
        self._leases: weakref.WeakSet[Lease] = weakref.WeakSet()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "EtcdClient":
        """A client for a registry URL (see :func:`parse_registry_url`); kwargs win."""
        parsed = parse_registry_url(url)
        endpoints = parsed.pop("endpoints")
        for name, value in parsed.items():
            if value is not None and kwargs.get(name) is None:
                kwargs[name] = value
        return cls(endpoints, **kwargs)

    def __repr__(self) -> str:
        scheme = "etcds" if self.tls else "etcd"
        return f"<EtcdClient {scheme}://{','.join(self.endpoints)}>"

    # -- connections --------------------------------------------------------
    def _conn(self, idx: int) -> _Conn:
        """The channel to endpoint ``idx``, opened in the running loop."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # grpc.aio channels belong to the loop that made them.
            self._loop = loop
            self._conns = {}
            self._auth_lock = asyncio.Lock()
        conn = self._conns.get(idx)
        if conn is None:
            target = self.endpoints[idx]
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(target, self._credentials,
                                                  options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            conn = self._conns[idx] = _Conn(channel)
        return conn

    def _rotate(self, idx: int, reason: object) -> None:
        """Move to the next endpoint after ``idx`` failed (once per failure)."""
        if len(self.endpoints) > 1 and self._idx == idx:
            self._idx = (idx + 1) % len(self.endpoints)
            log.info("etcd endpoint %s failed (%s); trying %s", self.endpoints[idx],
                     _short(reason), self.endpoints[self._idx])

    def _metadata(self, streaming: bool = False) -> tuple[tuple[str, str], ...] | None:
        """Call metadata: the auth token, and for streams "fail if no leader"."""
        items: list[tuple[str, str]] = []
        if self._token:
            items.append(("token", self._token))
        if streaming:
            items.append(("hasleader", "true"))
        return tuple(items) or None

    def _open_stream(self, idx: int, name: str) -> Any:
        """Start a long-lived stream call (no deadline) on endpoint ``idx``."""
        return self._conn(idx).method(name)(metadata=self._metadata(streaming=True))

    def _unavailable(self, what: str, last: object) -> EtcdUnavailable:
        """The error for 'no endpoint answered in time'."""
        return EtcdUnavailable(
            f"no etcd endpoint answered {what} within {self.timeout:g}s "
            f"(endpoints: {', '.join(self.endpoints)}; last error: {_short(last)})",
            grpc.StatusCode.UNAVAILABLE)

    async def _retry(self, what: str,
                     attempt: Callable[[int, float, Any], Awaitable[T]], *,
                     auth: bool = True, deadline: float | None = None) -> tuple[T, int]:
        """Run ``attempt(endpoint_index, timeout, metadata)`` until it answers or time runs out.

        Transient failures move on to the next endpoint; a stale token is
        renewed once. Returns the result and how many attempts were made.
        """
        loop = asyncio.get_running_loop()
        self._conn(self._idx)  # bind to this loop before reading any state
        if deadline is None:
            deadline = loop.time() + self.timeout
        # With several endpoints one attempt may not use up the whole budget, so
        # a black-holed endpoint (no RST, connect hangs) still leaves time for
        # the others; with one endpoint it gets everything.
        per_attempt = self.timeout if len(self.endpoints) == 1 else max(
            min(1.0, self.timeout), self.timeout / len(self.endpoints))
        attempts = failed_in_round = 0
        backoff = 0.05
        reauthed = False
        last: object = "none"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._unavailable(what, last)
            if auth and self._token is None:
                await self._authenticate(deadline, stale=None)
                continue
            idx = self._idx
            token = self._token
            attempts += 1
            try:
                result = await attempt(idx, min(remaining, per_attempt),
                                       self._metadata() if auth else None)
                return result, attempts
            except grpc.aio.AioRpcError as err:
                if err.code() not in _TRANSIENT:
                    if auth and self._user and not reauthed and _is_token_error(err):
                        reauthed = True
                        await self._authenticate(deadline, stale=token)
                        continue
                    raise _translate(what, err) from None
                last = err
            except _StreamBroken as err:
                last = err
            self._rotate(idx, last)
            failed_in_round += 1
            if failed_in_round >= len(self.endpoints):
                failed_in_round = 0
                await asyncio.sleep(max(0.0, min(backoff, deadline - loop.time())))
                backoff = min(backoff * 2, 0.5)

    async def _call(self, name: str, request: Any, *, auth: bool = True,
                    deadline: float | None = None) -> tuple[Any, int]:
        """One unary etcd call with failover; returns (response, attempts)."""
        def attempt(idx: int, timeout: float, metadata: Any) -> Awaitable[Any]:
            return self._conn(idx).method(name)(request, timeout=timeout, metadata=metadata)
        return await self._retry(name, attempt, auth=auth, deadline=deadline)

    async def _unary(self, name: str, request: Any) -> Any:
        """One unary etcd call with failover; returns the response."""
        return (await self._call(name, request))[0]

    async def _authenticate(self, deadline: float, stale: str | None) -> None:
        """Get a token (once for all waiting callers) unless someone already renewed ``stale``."""
        assert self._auth_lock is not None
        async with self._auth_lock:
            if self._token is not None and self._token != stale:
                return
            self._token = None
            request = pb.AuthenticateRequest(name=self._user or "", password=self._password)
            try:
                response, _ = await self._call("Authenticate", request, auth=False,
                                               deadline=deadline)
            except EtcdError as err:
                if "authentication is not enabled" in str(err):
                    log.warning("etcd auth is not enabled; ignoring user %r", self._user)
                    self._token = ""
                    return
                raise
            self._token = response.token
            log.debug("authenticated to etcd as %r", self._user)

    async def _ensure_token(self) -> None:
        """Authenticate now if credentials are set and no token is held (for streams)."""
        self._conn(self._idx)
        if self._token is None:
            await self._authenticate(asyncio.get_running_loop().time() + self.timeout, None)

    async def _renew_token(self, stale: str | None) -> None:
        """Replace a token a stream was refused with (for streams)."""
        await self._authenticate(asyncio.get_running_loop().time() + self.timeout, stale)

    # -- KV -----------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        """The key's current KeyValue, or None if it does not exist."""
        response = await self._unary("Range", pb.RangeRequest(key=_b(key)))
        return response.kvs[0] if response.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` (sorted by key) and the store revision they were read at."""
        key = _b(prefix)
        response = await self._unary("Range", pb.RangeRequest(key=key, range_end=_prefix_end(key)))
        return list(response.kvs), response.header.revision

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Set ``key`` (attached to ``lease`` if non-zero); returns the new revision."""
        response = await self._unary("Put", pb.PutRequest(key=_b(key), value=_b(value),
                                                          lease=lease))
        return response.header.revision

    async def delete(self, key: str) -> int:
        """Delete one key; returns how many keys were deleted (0 or 1)."""
        response = await self._unary("DeleteRange", pb.DeleteRangeRequest(key=_b(key)))
        return response.deleted

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        key = _b(prefix)
        response = await self._unary("DeleteRange",
                                     pb.DeleteRangeRequest(key=key, range_end=_prefix_end(key)))
        return response.deleted

    async def put_if_absent(self, key: str, value: bytes | str, lease: int = 0) -> bool:
        """Create ``key`` only if it does not exist (Txn on create_revision == 0).

        Returns True if this call created it. If the first attempt timed out
        and a retry finds the key holding exactly our value under our
        (non-zero) lease, our first attempt landed and this returns True; with
        ``lease=0`` that case cannot be told apart and returns False.
        """
        raw_key, raw_value = _b(key), _b(value)
        request = pb.TxnRequest(
            compare=[pb.Compare(key=raw_key, target=pb.Compare.CREATE,
                                result=pb.Compare.EQUAL, create_revision=0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=raw_key, value=raw_value,
                                                            lease=lease))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=raw_key))])
        response, attempts = await self._call("Txn", request)
        if response.succeeded:
            return True
        if attempts > 1 and lease:
            kvs = response.responses[0].response_range.kvs
            return bool(kvs) and kvs[0].value == raw_value and kvs[0].lease == lease
        return False

    async def txn(self, compare: list, success: list, failure: list) -> TxnResponse:
        """A raw transaction: pb.Compare list, then ops (RequestOp or bare Range/Put/DeleteRange/Txn requests)."""
        request = pb.TxnRequest(compare=compare, success=[_op(o) for o in success],
                                failure=[_op(o) for o in failure])
        return await self._unary("Txn", request)

    async def put_many(self, puts: Iterable[tuple[str, bytes | str, int]],
                       deletes: Iterable[str] = ()) -> None:
        """Write (key, value, lease) triples and delete keys, atomically per batch of 100 ops."""
        ops = [pb.PutRequest(key=_b(k), value=_b(v), lease=lease) for k, v, lease in puts]
        ops += [pb.DeleteRangeRequest(key=_b(k)) for k in deletes]
        for start in range(0, len(ops), 100):  # etcd's default --max-txn-ops is 128
            await self.txn([], ops[start:start + 100], [])

    async def compact(self, revision: int, physical: bool = False) -> None:
        """Discard history before ``revision`` (watches from older revisions get RESYNC)."""
        await self._unary("Compact", pb.CompactionRequest(revision=revision, physical=physical))

    async def status(self) -> pb.StatusResponse:
        """Status of the member currently used (version, leader, db size, raft index)."""
        return await self._unary("Status", pb.StatusRequest())

    # -- leases -------------------------------------------------------------
    async def lease_grant(self, ttl: int) -> int:
        """Grant a lease of ``ttl`` seconds (etcd may raise it to its minimum); returns its id."""
        return (await self._lease_grant_full(ttl)).ID

    async def _lease_grant_full(self, ttl: int) -> pb.LeaseGrantResponse:
        """LeaseGrant returning the whole response (the granted TTL matters to Lease)."""
        response = await self._unary("LeaseGrant", pb.LeaseGrantRequest(TTL=int(ttl)))
        if response.error:
            raise EtcdError(f"etcd LeaseGrant failed: {response.error}")
        return response

    async def lease_revoke(self, lease_id: int) -> bool:
        """Revoke a lease, deleting its keys; False if it no longer existed."""
        try:
            await self._unary("LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id))
        except EtcdError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def lease_ttl(self, lease_id: int) -> int:
        """Seconds the lease has left, or -1 if it does not exist."""
        response = await self._unary("LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=lease_id))
        return response.TTL

    async def lease_keepalive_once(self, lease_id: int) -> int:
        """Renew a lease once; returns its TTL after renewal, 0 meaning the lease is gone."""
        request = pb.LeaseKeepAliveRequest(ID=lease_id)

        async def attempt(idx: int, timeout: float, metadata: Any) -> int:
            call = self._conn(idx).method("LeaseKeepAlive")(timeout=timeout, metadata=metadata)
            try:
                return (await _exchange(call, request)).TTL
            finally:
                call.cancel()

        return (await self._retry("LeaseKeepAlive", attempt))[0]

    async def lease(self, ttl: int, on_lost: Callable[[], Any] | None = None) -> "Lease":
        """Grant a lease and keep it alive in the background until revoked or lost."""
        response = await self._lease_grant_full(ttl)
        lease = Lease(self, response.ID, response.TTL, on_lost)
        self._leases.add(lease)
        lease._start(asyncio.get_running_loop().time())
        return lease

    # -- watch --------------------------------------------------------------
    def watch_prefix(self, prefix: str, start_revision: int | None = None, *,
                     max_disconnect: float | None = None) -> "Watch":
        """Watch every key under ``prefix``; an async iterator of :class:`WatchEvent`.

        ``start_revision=None`` delivers changes made after the watch is
        created (``await watch.start()`` or ``async with`` creates it now;
        plain iteration creates it on the first ``__anext__``). Otherwise
        changes from that revision on. See :class:`Watch`.
        """
        return Watch(self, _b(prefix), start_revision, max_disconnect)

    # -- lifetime -----------------------------------------------------------
    async def close(self) -> None:
        """Stop watches and lease keepalives (without revoking) and close channels."""
        for watch in list(self._watches):
            await watch.aclose()
        for lease in list(self._leases):
            await lease.stop()
        conns, self._conns = self._conns, {}
        if self._loop is asyncio.get_running_loop():
            for conn in conns.values():
                await conn.channel.close()

    async def __aenter__(self) -> "EtcdClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _op(op: Any) -> pb.RequestOp:
    """Wrap a bare request in a RequestOp."""
    if isinstance(op, pb.RequestOp):
        return op
    if isinstance(op, pb.RangeRequest):
        return pb.RequestOp(request_range=op)
    if isinstance(op, pb.PutRequest):
        return pb.RequestOp(request_put=op)
    if isinstance(op, pb.DeleteRangeRequest):
        return pb.RequestOp(request_delete_range=op)
    if isinstance(op, pb.TxnRequest):
        return pb.RequestOp(request_txn=op)
    raise TypeError(f"not a txn operation: {type(op).__name__}")


def _short(reason: object) -> str:
    """A one-line description of an error for logs and messages."""
    if isinstance(reason, grpc.aio.AioRpcError):
        return f"{reason.code().name}: {reason.details()}"
    if isinstance(reason, (EtcdError, _StreamBroken)):
        return str(reason)
    return f"{type(reason).__name__}: {reason}".rstrip(": ")


# --------------------------------------------------------------------------
# Leases


class Lease:
    """A lease kept alive by a background task (every TTL/3, reconnecting on errors).

    ``on_lost`` (sync or async, no arguments) is called once if etcd reports
    the lease expired, or if it could not be renewed before it would have
    expired; the keepalive then stops and the lease's keys are gone or about
    to go.
    """

    def __init__(self, client: EtcdClient, lease_id: int, ttl: int,
                 on_lost: Callable[[], Any] | None) -> None:
        self.id = lease_id
        self.ttl = ttl
        self._client = client
        self._on_lost = on_lost
        self._lost = False
        self._task: asyncio.Task | None = None
        self._expiry = 0.0

    @property
    def lost(self) -> bool:
        """Whether the lease was found expired (``on_lost`` has been called)."""
        return self._lost

    @property
    def active(self) -> bool:
        """Whether the background keepalive is running."""
        return self._task is not None and not self._task.done()

    def _start(self, granted_at: float) -> None:
        """Start the keepalive task; the lease counts as expiring ``ttl`` s after ``granted_at``."""
        self._expiry = granted_at + self.ttl
        self._task = asyncio.get_running_loop().create_task(
            self._keepalive(), name=f"etcd-lease-{self.id:x}")

    async def _keepalive(self) -> None:
        """Renew until stopped, lost, or not renewable before expiry."""
        client = self._client
        loop = asyncio.get_running_loop()
        interval = max(self.ttl / 3.0, 0.05)
        request = pb.LeaseKeepAliveRequest(ID=self.id)
        call = None
        idx = client._idx
        backoff = 0.05
        renew, reauthed = False, False
        stale: str | None = None
        try:
            while True:
                if loop.time() >= self._expiry:
                    await self._lose(f"not renewed within its {self.ttl}s TTL")
                    return
                token = client._token
                try:
                    if renew:
                        renew = False
                        await client._renew_token(stale)
                    if call is None:
                        await client._ensure_token()
                        idx = client._idx
                        call = client._open_stream(idx, "LeaseKeepAlive")
                    sent = loop.time()
                    wait = max(0.01, min(client.timeout, self._expiry - sent))
                    response = await asyncio.wait_for(_exchange(call, request), wait)
                except Exception as err:  # any failure: retry until the lease would expire
                    failure: object = err
                else:
                    if response.TTL <= 0:
                        await self._lose("expired (etcd answered TTL 0)")
                        return
                    if backoff > 0.05:
                        log.info("etcd lease %x renewed again", self.id)
                    self._expiry = sent + response.TTL
                    backoff, reauthed = 0.05, False
                    await asyncio.sleep(interval)
                    continue
                call = _cancel(call)
                if (client._user and not reauthed and isinstance(failure, grpc.aio.AioRpcError)
                        and failure.code() not in _TRANSIENT and _is_token_error(failure)):
                    renew, reauthed, stale = True, True, token
                    continue
                client._rotate(idx, failure)
                left = self._expiry - loop.time()
                log.log(logging.WARNING if backoff == 0.05 else logging.DEBUG,
                        "keepalive of etcd lease %x failed (%s); retrying, %.1fs left",
                        self.id, _short(failure), left)
                await asyncio.sleep(max(0.0, min(backoff, left)))
                backoff = min(backoff * 2, 0.5)
        finally:
            _cancel(call)

    async def _lose(self, reason: str) -> None:
        """Mark the lease lost and call ``on_lost`` once."""
        if self._lost:
            return
        self._lost = True
        log.warning("etcd lease %x lost: %s", self.id, reason)
        if self._on_lost is None:
            return
        try:
            result = self._on_lost()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_lost callback of etcd lease %x failed", self.id)

    async def stop(self) -> None:
        """Stop renewing (the lease then expires after its TTL); does not call on_lost."""
        task, self._task = self._task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._client._leases.discard(self)

    async def revoke(self) -> None:
        """Stop renewing and revoke the lease now, deleting its keys."""
        await self.stop()
        await self._client.lease_revoke(self.id)

    def __repr__(self) -> str:
        state = "lost" if self._lost else ("active" if self.active else "stopped")
        return f"<Lease {self.id:x} ttl={self.ttl} {state}>"


async def _write(call: Any, request: Any) -> None:
    """Write on a stream; if the call has already ended, the next read raises why."""
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        pass


async def _exchange(call: Any, request: Any) -> Any:
    """Write one request on a stream and read one answer."""
    await _write(call, request)
    response = await call.read()
    if response is grpc.aio.EOF:
        raise _StreamBroken("stream closed by etcd")
    return response


def _cancel(call: Any) -> None:
    """Cancel a stream call if there is one; returns None for assignment."""
    if call is not None:
        call.cancel()
    return None


# --------------------------------------------------------------------------
# Watches


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change under a watched prefix.

    ``type`` is "PUT", "DELETE", or "RESYNC". A RESYNC replaces everything
    the consumer knew: the revision it should have resumed from was
    compacted, so ``snapshot`` holds a PUT event for every key under the
    prefix as of ``mod_revision``, and events after that revision follow.
    """

    type: str
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0
    snapshot: tuple["WatchEvent", ...] = ()

    @classmethod
    def from_kv(cls, type_: str, kv: KeyValue) -> "WatchEvent":
        """An event for a KeyValue."""
        return cls(type_, _s(kv.key), kv.value, kv.mod_revision, kv.create_revision,
                   kv.version, kv.lease)


_WAKE = object()


class Watch:
    """An async iterator of :class:`WatchEvent` for one prefix that survives disconnects.

    A background task owns the Watch stream. When the stream breaks (etcd
    restarted, endpoint died, no answer to a progress probe) it reopens it on
    the next endpoint from the last delivered revision + 1, retrying with
    backoff for as long as needed, or until ``max_disconnect`` seconds when
    that is set (then the iterator raises :class:`EtcdUnavailable`). Creating
    the watch must succeed within the client's timeout, else ``start()`` (or
    the first ``__anext__``) raises EtcdUnavailable. Errors that retrying
    cannot fix (auth refused) are raised by the iterator. ``aclose()`` or
    ``client.close()`` ends it.
    """

    # An idle stream is probed with a progress request this often, so a hung
    # etcd is noticed in about this plus the client timeout.
    probe_interval = 5.0
    queue_size = 1024

    def __init__(self, client: EtcdClient, prefix: bytes, start_revision: int | None,
                 max_disconnect: float | None) -> None:
        self._client = client
        self._key = prefix
        self._range_end = _prefix_end(prefix)
        self._next_rev = start_revision if start_revision else None
        self._max_disconnect = max_disconnect
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._started: asyncio.Future | None = None
        self._final: BaseException | None = None
        self._created = 0  # streams created so far

    @property
    def prefix(self) -> str:
        """The watched prefix."""
        return _s(self._key)

    @property
    def revision(self) -> int:
        """The revision the watch has delivered up to (it resumes after it); 0 before start."""
        return (self._next_rev or 1) - 1

    async def start(self) -> "Watch":
        """Create the watch now (idempotent); raises EtcdUnavailable if etcd does not answer."""
        if self._task is None:
            if self._final is not None:
                raise EtcdError("watch is closed")
            loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue(self.queue_size)
            self._started = loop.create_future()
            self._task = loop.create_task(self._run(), name=f"etcd-watch-{self.prefix}")
            self._client._watches.add(self)
        assert self._started is not None
        await asyncio.shield(self._started)
        return self

    def __aiter__(self) -> "Watch":
        return self

    async def __anext__(self) -> WatchEvent:
        if self._task is None and self._final is not None:
            raise StopAsyncIteration
        await self.start()
        assert self._queue is not None
        while True:
            if not self._queue.empty():
                item = self._queue.get_nowait()
            elif self._final is not None:
                raise self._final
            else:
                item = await self._queue.get()
            if item is not _WAKE:
                return item

    async def aclose(self) -> None:
        """Stop watching; iteration then ends."""
        task, self._task = self._task, None
        if self._final is None:
            self._final = StopAsyncIteration()
        if self._started is not None and not self._started.done():
            self._started.set_exception(EtcdError("watch closed before it was created"))
            self._started.exception()
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._client._watches.discard(self)

    async def __aenter__(self) -> "Watch":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _finish(self, error: BaseException) -> None:
        """End the iterator with ``error`` (StopAsyncIteration for a clean end)."""
        self._final = error
        assert self._started is not None and self._queue is not None
        if not self._started.done():
            self._started.set_exception(error)
            self._started.exception()  # mark retrieved; start() re-raises it
        try:
            self._queue.put_nowait(_WAKE)
        except asyncio.QueueFull:
            pass  # the consumer has items to read first, then sees _final

    async def _run(self) -> None:
        """Keep a Watch stream open, reopening it after failures."""
        client = self._client
        loop = asyncio.get_running_loop()
        begun = loop.time()
        down_since: float | None = None
        backoff = 0.05
        renew, reauthed = False, False
        stale: str | None = None
        while True:
            idx = client._idx
            token = client._token
            created = self._created
            try:
                if renew:
                    renew = False
                    await client._renew_token(stale)
                await client._ensure_token()
                idx = client._idx
                await self._stream(idx, begun)
                failure: object = None  # a RESYNC: reopen at once
            except grpc.aio.AioRpcError as err:
                failure = err
                if err.code() not in _TRANSIENT and not (client._user and _is_token_error(err)):
                    self._finish(_translate("Watch", err))
                    return
            except EtcdUnavailable as err:
                failure = err
            except EtcdAuthError as err:
                failure = err
                if not client._user:
                    self._finish(err)
                    return
            except EtcdError as err:
                self._finish(err)
                return
            except (asyncio.TimeoutError, _StreamBroken) as err:
                failure = err
            except Exception as err:  # a bug must end the iterator, not hang it
                log.exception("etcd watch on %r failed", self.prefix)
                self._finish(EtcdError(f"watch failed: {err!r}"))
                return
            if self._created != created:  # the stream worked for a while
                down_since, backoff, reauthed = None, 0.05, False
            if failure is None:
                continue
            if isinstance(failure, EtcdAuthError) or (
                    isinstance(failure, grpc.aio.AioRpcError) and failure.code() not in _TRANSIENT):
                if reauthed:
                    self._finish(failure if isinstance(failure, EtcdError)
                                 else _translate("Watch", failure))
                    return
                renew, reauthed, stale = True, True, token
                continue
            client._rotate(idx, failure)
            now = loop.time()
            if not self._started.done():
                if now - begun >= client.timeout:
                    self._finish(client._unavailable("Watch", failure))
                    return
            else:
                if down_since is None:
                    down_since = now
                    log.info("etcd watch on %r broken (%s); resuming from revision %d",
                             self.prefix, _short(failure), self._next_rev or 0)
                if self._max_disconnect is not None and now - down_since >= self._max_disconnect:
                    self._finish(client._unavailable("Watch", failure))
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _stream(self, idx: int, begun: float) -> None:
        """One Watch stream: create, then deliver events until it breaks or needs a RESYNC."""
        client = self._client
        loop = asyncio.get_running_loop()
        call = client._open_stream(idx, "Watch")
        pending: asyncio.Future | None = None
        try:
            create = pb.WatchCreateRequest(key=self._key, range_end=self._range_end,
                                           start_revision=self._next_rev or 0)
            await _write(call, pb.WatchRequest(create_request=create))
            wait = client.timeout
            if not self._started.done():
                wait = max(0.05, begun + client.timeout - loop.time())
            response = await asyncio.wait_for(call.read(), wait)
            if response is grpc.aio.EOF:
                raise _StreamBroken("Watch stream closed before the watch was created")
            if response.canceled or not response.created:
                raise self._cancel_error(response)
            if self._next_rev is None:
                self._next_rev = response.header.revision + 1
            self._created += 1
            if not self._started.done():
                self._started.set_result(None)
            else:
                log.info("etcd watch on %r resumed from revision %d", self.prefix, self._next_rev)
            probed = False
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait(
                    {pending}, timeout=client.timeout if probed else self.probe_interval)
                if not done:
                    if probed:
                        raise _StreamBroken("no answer to a watch progress request")
                    await _write(call, pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                    probed = True
                    continue
                response, pending, probed = pending.result(), None, False
                if response is grpc.aio.EOF:
                    raise _StreamBroken("Watch stream closed by etcd")
                if response.compact_revision:
                    await self._resync(response.compact_revision)
                    return
                if response.canceled:
                    raise self._cancel_error(response)
                for event in response.events:
                    type_ = "DELETE" if event.type == pb.Event.DELETE else "PUT"
                    await self._queue.put(WatchEvent.from_kv(type_, event.kv))
                    self._next_rev = event.kv.mod_revision + 1
        finally:
            if pending is not None:
                pending.cancel()
            call.cancel()

    def _cancel_error(self, response: pb.WatchResponse) -> Exception:
        """The error for a watch etcd refused or cancelled."""
        reason = response.cancel_reason or "no reason given"
        low = reason.lower()
        if "no leader" in low or "leader changed" in low:
            return _StreamBroken(f"watch cancelled by etcd: {reason}")
        if any(text in low for text in _AUTH_ERRORS):
            return EtcdAuthError(f"etcd refused the watch on {self.prefix!r}: {reason}",
                                 grpc.StatusCode.PERMISSION_DENIED)
        return EtcdError(f"etcd cancelled the watch on {self.prefix!r}: {reason}")

    async def _resync(self, compact_revision: int) -> None:
        """Replace lost history with a snapshot (one RESYNC event) and continue after it."""
        log.warning("etcd watch on %r: revision %d was compacted (oldest kept: %d); "
                    "delivering a RESYNC snapshot", self.prefix, self._next_rev or 0,
                    compact_revision)
        kvs, revision = await self._client.get_prefix(self.prefix)
        snapshot = tuple(WatchEvent.from_kv("PUT", kv) for kv in kvs)
        await self._queue.put(WatchEvent("RESYNC", self.prefix, b"", revision,
                                         snapshot=snapshot))
        self._next_rev = revision + 1
