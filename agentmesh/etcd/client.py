"""EtcdClient: the KV, txn, lease and watch calls, over the helpers of this package."""
from __future__ import annotations

import asyncio
import weakref
from typing import Any, Callable, Iterable

import grpc

from agentmesh._tls import Pem, etcd_credentials, require_pair
from agentmesh.etcdv3 import etcd_pb2 as pb

from ._auth import Auth
from ._endpoints import Endpoints, Metadata, exchange
from ._errors import EtcdError
from ._keys import prefix_end, to_bytes
from ._lease import Lease
from ._urls import normalize_endpoints, parse_registry_url
from ._watch import Watch

KeyValue = pb.KeyValue
TxnResponse = pb.TxnResponse


class EtcdClient:
    """An asyncio client for etcd v3 over gRPC, with failover, auth and TLS.

    Construct it anywhere; channels are opened lazily inside the running
    event loop (and re-opened if it is later used from another loop).
    """

    def __init__(self, endpoints: list[str] | str, *, user: str | None = None,
                 password: str | None = None, ca_cert: Pem | None = None,
                 cert: Pem | None = None, key: Pem | None = None, tls: bool = False,
                 timeout: float = 2.0) -> None:
        targets, url_tls = normalize_endpoints(endpoints)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        require_pair(cert, key, "cert and key for a client certificate")
        self.tls = bool(tls or url_tls or ca_cert is not None or cert is not None)
        if password and not user:
            raise ValueError(f"an etcd password but no user for {self._scheme}://{','.join(targets)}: name the "
                             f"user in the registry URL ({self._scheme}://USER@{targets[0]}) or drop the password "
                             f"(AGENTMESH_ETCD_PASSWORD_FILE)")
        credentials = etcd_credentials(ca_cert, cert, key) if self.tls else None
        self._endpoints = Endpoints(targets, float(timeout), credentials)
        #: the registry URL for messages: never the password
        self.url = f"{self._scheme}://{user + (':***' if password else '') + '@' if user else ''}{','.join(targets)}"
        self._auth = Auth(self._endpoints, user, password, self.url)
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

    @property
    def endpoints(self) -> list[str]:
        """The endpoints as ``host:port`` strings, in rotation order."""
        return self._endpoints.targets

    @property
    def timeout(self) -> float:
        """Seconds a call may take, failover included, before EtcdUnavailable."""
        return self._endpoints.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._endpoints.timeout = value

    @property
    def _scheme(self) -> str:
        """``etcds`` with TLS, else ``etcd``."""
        return "etcds" if self.tls else "etcd"

    def __repr__(self) -> str:
        return f"<EtcdClient {self._scheme}://{','.join(self.endpoints)}>"

    # -- raw calls (also used by the tests) ---------------------------------
    @property
    def _idx(self) -> int:
        """Index of the endpoint in use."""
        return self._endpoints.idx

    @property
    def _token(self) -> str | None:
        """The auth token held (None: to fetch; "": no auth)."""
        return self._auth.token

    async def _call(self, name: str, request: Any, *, auth: bool = True,
                    deadline: float | None = None) -> tuple[Any, int]:
        """One unary etcd call with failover; returns (response, attempts)."""
        return await self._endpoints.call(name, request, auth=self._auth if auth else None,
                                          deadline=deadline)

    async def _unary(self, name: str, request: Any) -> Any:
        """One unary etcd call with failover; returns the response."""
        return (await self._call(name, request))[0]

    def _open_stream(self, idx: int, name: str) -> Any:
        """Start a long-lived stream call (no deadline) on endpoint ``idx``."""
        return self._endpoints.open_stream(idx, name, self._auth.metadata(streaming=True))

    # -- KV -----------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        """The key's current KeyValue, or None if it does not exist."""
        response = await self._unary("Range", pb.RangeRequest(key=to_bytes(key)))
        return response.kvs[0] if response.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` (sorted by key) and the store revision they were read at."""
        key = to_bytes(prefix)
        response = await self._unary("Range", pb.RangeRequest(key=key, range_end=prefix_end(key)))
        return list(response.kvs), response.header.revision

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Set ``key`` (attached to ``lease`` if non-zero); returns the new revision."""
        response = await self._unary("Put", pb.PutRequest(key=to_bytes(key),
                                                          value=to_bytes(value), lease=lease))
        return response.header.revision

    async def delete(self, key: str) -> int:
        """Delete one key; returns how many keys were deleted (0 or 1)."""
        response = await self._unary("DeleteRange", pb.DeleteRangeRequest(key=to_bytes(key)))
        return response.deleted

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        key = to_bytes(prefix)
        response = await self._unary("DeleteRange",
                                     pb.DeleteRangeRequest(key=key, range_end=prefix_end(key)))
        return response.deleted

    async def put_if_absent(self, key: str, value: bytes | str, lease: int = 0) -> bool:
        """Create ``key`` only if it does not exist (Txn on create_revision == 0).

        Returns True if this call created it. If the first attempt timed out
        and a retry finds the key holding exactly our value under our
        (non-zero) lease, our first attempt landed and this returns True; with
        ``lease=0`` that case cannot be told apart and returns False.
        """
        raw_key, raw_value = to_bytes(key), to_bytes(value)
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
                       deletes: Iterable[str] = ()) -> int:
        """Write (key, value, lease) triples and delete keys, atomically per batch of 100 ops; returns the
        store revision after the last batch (0 when there was nothing to write)."""
        ops = [pb.PutRequest(key=to_bytes(k), value=to_bytes(v), lease=lease)
               for k, v, lease in puts]
        ops += [pb.DeleteRangeRequest(key=to_bytes(k)) for k in deletes]
        revision = 0
        for start in range(0, len(ops), 100):  # etcd's default --max-txn-ops is 128
            revision = (await self.txn([], ops[start:start + 100], [])).header.revision
        return revision

    async def compact(self, revision: int, physical: bool = False) -> None:
        """Discard history before ``revision`` (watches from older revisions get RESYNC)."""
        await self._unary("Compact", pb.CompactionRequest(revision=revision, physical=physical))

    async def status(self) -> pb.StatusResponse:
        """Status of the member currently used (version, leader, db size, raft index)."""
        return await self._unary("Status", pb.StatusRequest())

    # -- auth administration (what turning auth on takes) ------------------
    async def user_add(self, name: str, password: str) -> None:
        """Create a user with a password (etcd hashes it); the password travels in the request only."""
        await self._unary("UserAdd", pb.AuthUserAddRequest(name=name, password=password))

    async def user_list(self) -> list[str]:
        """The names of etcd's users."""
        return list((await self._unary("UserList", pb.AuthUserListRequest())).users)

    async def role_add(self, name: str) -> None:
        """Create a role (``root`` is the role that may do everything)."""
        await self._unary("RoleAdd", pb.AuthRoleAddRequest(name=name))

    async def user_grant_role(self, user: str, role: str) -> None:
        """Give ``user`` the role ``role``."""
        await self._unary("UserGrantRole", pb.AuthUserGrantRoleRequest(user=user, role=role))

    async def auth_enable(self) -> None:
        """Turn authentication on (etcd needs a ``root`` user holding the ``root`` role first)."""
        await self._unary("AuthEnable", pb.AuthEnableRequest())

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

        async def attempt(idx: int, timeout: float, metadata: Metadata) -> int:
            call = self._endpoints.conn(idx).method("LeaseKeepAlive")(timeout=timeout,
                                                                      metadata=metadata)
            try:
                return (await exchange(call, request)).TTL
            finally:
                call.cancel()

        return (await self._endpoints.retry("LeaseKeepAlive", attempt, auth=self._auth))[0]

    async def lease(self, ttl: int, on_lost: Callable[[], Any] | None = None) -> Lease:
        """Grant a lease and keep it alive in the background until revoked or lost."""
        response = await self._lease_grant_full(ttl)
        lease = Lease(self._endpoints, self._auth, response.ID, response.TTL, on_lost,
                      revoke=self.lease_revoke, live=self._leases)
        lease._start(asyncio.get_running_loop().time())
        return lease

    # -- watch --------------------------------------------------------------
    def watch_prefix(self, prefix: str, start_revision: int | None = None, *,
                     max_disconnect: float | None = None) -> Watch:
        """Watch every key under ``prefix``; an async iterator of :class:`WatchEvent`.

        ``start_revision=None`` delivers changes made after the watch is
        created (``await watch.start()`` or ``async with`` creates it now;
        plain iteration creates it on the first ``__anext__``). Otherwise
        changes from that revision on. See :class:`Watch`.
        """
        return Watch(self._endpoints, self._auth, to_bytes(prefix), start_revision,
                     max_disconnect, snapshot=self.get_prefix, live=self._watches)

    # -- lifetime -----------------------------------------------------------
    async def close(self) -> None:
        """Stop watches and lease keepalives (without revoking) and close channels."""
        for watch in list(self._watches):
            await watch.aclose()
        for lease in list(self._leases):
            await lease.stop()
        await self._endpoints.close()

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
