"""Channels to etcd's endpoints, rotation between them, and the retry/deadline loop.

Method callables are built by hand from etcd's method paths
(``/etcdserverpb.KV/Range`` ...) over our own subset of etcd's messages
(``agentmesh/etcdv3/etcd_pb2``).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol, TypeVar

import grpc

from agentmesh.etcdv3 import etcd_pb2 as pb

from .._grpc_tuning import OWN_SUBCHANNELS
from ._errors import TRANSIENT, EtcdUnavailable, StreamBroken, is_token_error, short, translate

log = logging.getLogger("agentmesh.etcd")

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...] | None

# name -> (method path, request type, response type)
UNARY = {
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
    "AuthEnable": ("/etcdserverpb.Auth/AuthEnable", pb.AuthEnableRequest, pb.AuthEnableResponse),
    "UserAdd": ("/etcdserverpb.Auth/UserAdd", pb.AuthUserAddRequest, pb.AuthUserAddResponse),
    "UserList": ("/etcdserverpb.Auth/UserList", pb.AuthUserListRequest, pb.AuthUserListResponse),
    "UserGrantRole": ("/etcdserverpb.Auth/UserGrantRole", pb.AuthUserGrantRoleRequest,
                      pb.AuthUserGrantRoleResponse),
    "RoleAdd": ("/etcdserverpb.Auth/RoleAdd", pb.AuthRoleAddRequest, pb.AuthRoleAddResponse),
    "Status": ("/etcdserverpb.Maintenance/Status", pb.StatusRequest, pb.StatusResponse),
}
STREAMS = {
    "Watch": ("/etcdserverpb.Watch/Watch", pb.WatchRequest, pb.WatchResponse),
    "LeaseKeepAlive": ("/etcdserverpb.Lease/LeaseKeepAlive", pb.LeaseKeepAliveRequest,
                       pb.LeaseKeepAliveResponse),
}

CHANNEL_OPTIONS = (
    # Notice a restarted etcd within ~0.1-1 s rather than gRPC's default 1-120 s.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Notice a dead peer under a long-lived watch; etcd accepts pings >= 5 s apart.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    OWN_SUBCHANNELS,   # one shared with another channel still in backoff fails a restarted member at once
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)


class Credentials(Protocol):
    """What the retry loop needs from the auth helper (``_auth.Auth``)."""

    user: str | None
    token: str | None  # None: authenticate first; "": no auth in use

    def metadata(self, streaming: bool = False) -> Metadata: ...

    async def authenticate(self, deadline: float, stale: str | None) -> None: ...


class _Conn:
    """One endpoint's channel and its method callables, made on first use."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.methods: dict[str, Any] = {}

    def method(self, name: str) -> Any:
        """The callable for ``name`` (unary or stream-stream)."""
        callable_ = self.methods.get(name)
        if callable_ is None:
            if name in UNARY:
                path, req, resp = UNARY[name]
                make = self.channel.unary_unary
            else:
                path, req, resp = STREAMS[name]
                make = self.channel.stream_stream
            callable_ = make(path, request_serializer=req.SerializeToString,
                             response_deserializer=resp.FromString)
            self.methods[name] = callable_
        return callable_


class Endpoints:
    """The endpoints of one client: a channel per endpoint, the current one, and failover.

    Channels are opened lazily inside the running event loop (and re-opened
    if the client is later used from another loop).
    """

    def __init__(self, targets: list[str], timeout: float,
                 credentials: grpc.ChannelCredentials | None) -> None:
        self.targets = targets
        self.timeout = timeout
        self.idx = 0  # the endpoint in use
        self._credentials = credentials
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: dict[int, _Conn] = {}

    def conn(self, idx: int) -> _Conn:
        """The channel to endpoint ``idx``, opened in the running loop."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # grpc.aio channels belong to the loop that made them.
            self._loop = loop
            self._conns = {}
        conn = self._conns.get(idx)
        if conn is None:
            target = self.targets[idx]
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(target, self._credentials,
                                                  options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            conn = self._conns[idx] = _Conn(channel)
        return conn

    def bind(self) -> None:
        """Bind to the running loop (opening the current endpoint's channel)."""
        self.conn(self.idx)

    def rotate(self, idx: int, reason: object) -> None:
        """Move to the next endpoint after ``idx`` failed (once per failure)."""
        if len(self.targets) > 1 and self.idx == idx:
            self.idx = (idx + 1) % len(self.targets)
            log.info("etcd endpoint %s failed (%s); trying %s", self.targets[idx],
                     short(reason), self.targets[self.idx])

    def unavailable(self, what: str, last: object) -> EtcdUnavailable:
        """The error for 'no endpoint answered in time'."""
        return EtcdUnavailable(
            f"no etcd endpoint answered {what} within {self.timeout:g}s "
            f"(endpoints: {', '.join(self.targets)}; last error: {short(last)})",
            grpc.StatusCode.UNAVAILABLE)

    def open_stream(self, idx: int, name: str, metadata: Metadata) -> Any:
        """Start a long-lived stream call (no deadline) on endpoint ``idx``."""
        return self.conn(idx).method(name)(metadata=metadata)

    async def retry(self, what: str, attempt: Callable[[int, float, Metadata], Awaitable[T]], *,
                    auth: Credentials | None, deadline: float | None = None) -> tuple[T, int]:
        """Run ``attempt(endpoint_index, timeout, metadata)`` until it answers or time runs out.

        Transient failures move on to the next endpoint; with ``auth`` a
        missing token is fetched first and a stale one renewed once. Returns
        the result and how many attempts were made.
        """
        loop = asyncio.get_running_loop()
        self.bind()  # bind to this loop before reading any state
        if deadline is None:
            deadline = loop.time() + self.timeout
        # With several endpoints one attempt may not use up the whole budget, so
        # a black-holed endpoint (no RST, connect hangs) still leaves time for
        # the others; with one endpoint it gets everything.
        per_attempt = self.timeout if len(self.targets) == 1 else max(
            min(1.0, self.timeout), self.timeout / len(self.targets))
        attempts = failed_in_round = 0
        backoff = 0.05
        reauthed = False
        last: object = "none"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self.unavailable(what, last)
            if auth is not None and auth.token is None:
                await auth.authenticate(deadline, stale=None)
                continue
            idx = self.idx
            token = auth.token if auth is not None else None
            attempts += 1
            try:
                result = await attempt(idx, min(remaining, per_attempt),
                                       auth.metadata() if auth is not None else None)
                return result, attempts
            except grpc.aio.AioRpcError as err:
                if err.code() not in TRANSIENT:
                    if auth is not None and auth.user and not reauthed and is_token_error(err):
                        reauthed = True
                        await auth.authenticate(deadline, stale=token)
                        continue
                    raise translate(what, err) from None
                last = err
            except StreamBroken as err:
                last = err
            self.rotate(idx, last)
            failed_in_round += 1
            if failed_in_round >= len(self.targets):
                failed_in_round = 0
                await asyncio.sleep(max(0.0, min(backoff, deadline - loop.time())))
                backoff = min(backoff * 2, 0.5)

    async def call(self, name: str, request: Any, *, auth: Credentials | None,
                   deadline: float | None = None) -> tuple[Any, int]:
        """One unary etcd call with failover; returns (response, attempts)."""
        def attempt(idx: int, timeout: float, metadata: Metadata) -> Awaitable[Any]:
            return self.conn(idx).method(name)(request, timeout=timeout, metadata=metadata)
        return await self.retry(name, attempt, auth=auth, deadline=deadline)

    async def close(self) -> None:
        """Forget every channel, closing them if they belong to the running loop."""
        conns, self._conns = self._conns, {}
        if self._loop is asyncio.get_running_loop():
            for conn in conns.values():
                await conn.channel.close()


async def write(call: Any, request: Any) -> None:
    """Write on a stream; if the call has already ended, the next read raises why."""
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        pass


async def exchange(call: Any, request: Any) -> Any:
    """Write one request on a stream and read one answer."""
    await write(call, request)
    response = await call.read()
    if response is grpc.aio.EOF:
        raise StreamBroken("stream closed by etcd")
    return response


def cancel(call: Any) -> None:
    """Cancel a stream call if there is one; returns None for assignment."""
    if call is not None:
        call.cancel()
    return None
