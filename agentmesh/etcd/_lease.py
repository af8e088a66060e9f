"""A lease kept alive in the background, with ``on_lost`` when it expires."""
from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Awaitable, Callable, MutableSet

import grpc

from agentmesh.etcdv3 import etcd_pb2 as pb

from ._auth import Auth
from ._endpoints import Endpoints, cancel, exchange
from ._errors import TRANSIENT, is_token_error, short

log = logging.getLogger("agentmesh.etcd")


class Lease:
    """A lease kept alive by a background task (every TTL/3, reconnecting on errors).

    ``on_lost`` (sync or async, no arguments) is called once if etcd reports
    the lease expired, or if it could not be renewed before it would have
    expired; the keepalive then stops and the lease's keys are gone or about
    to go. Made by :meth:`EtcdClient.lease`.
    """

    def __init__(self, endpoints: Endpoints, auth: Auth, lease_id: int, ttl: int,
                 on_lost: Callable[[], Any] | None, *,
                 revoke: Callable[[int], Awaitable[bool]], live: MutableSet["Lease"]) -> None:
        """``revoke`` revokes a lease by id; ``live`` is the client's set of running leases."""
        self.id = lease_id
        self.ttl = ttl
        self._endpoints = endpoints
        self._auth = auth
        self._revoke = revoke
        self._live = live
        self._on_lost = on_lost
        self._lost = False
        self._task: asyncio.Task | None = None
        self._expiry = 0.0
        #: keepalives etcd answered, and those that failed (for metrics)
        self.renewals = 0
        self.renewal_failures = 0

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
        self._live.add(self)
        self._expiry = granted_at + self.ttl
        self._task = asyncio.get_running_loop().create_task(
            self._keepalive(), name=f"etcd-lease-{self.id:x}")

    async def _keepalive(self) -> None:
        """Renew until stopped, lost, or not renewable before expiry."""
        endpoints, auth = self._endpoints, self._auth
        loop = asyncio.get_running_loop()
        interval = max(self.ttl / 3.0, 0.05)
        request = pb.LeaseKeepAliveRequest(ID=self.id)
        call = None
        idx = endpoints.idx
        backoff = 0.05
        renew, reauthed = False, False
        stale: str | None = None
        try:
            while True:
                if loop.time() >= self._expiry:
                    await self._lose(f"not renewed within its {self.ttl}s TTL")
                    return
                token = auth.token
                try:
                    if renew:
                        renew = False
                        await auth.renew(stale)
                    if call is None:
                        await auth.ensure()
                        idx = endpoints.idx
                        call = endpoints.open_stream(idx, "LeaseKeepAlive",
                                                     auth.metadata(streaming=True))
                    sent = loop.time()
                    wait = max(0.01, min(endpoints.timeout, self._expiry - sent))
                    response = await asyncio.wait_for(exchange(call, request), wait)
                except Exception as err:  # any failure: retry until the lease would expire
                    failure: object = err
                else:
                    if response.TTL <= 0:
                        await self._lose("expired (etcd answered TTL 0)")
                        return
                    if backoff > 0.05:
                        log.info("etcd lease %x renewed again", self.id)
                    self._expiry = sent + response.TTL
                    self.renewals += 1
                    backoff, reauthed = 0.05, False
                    await asyncio.sleep(interval)
                    continue
                call = cancel(call)
                self.renewal_failures += 1
                if (auth.user and not reauthed and isinstance(failure, grpc.aio.AioRpcError)
                        and failure.code() not in TRANSIENT and is_token_error(failure)):
                    renew, reauthed, stale = True, True, token
                    continue
                endpoints.rotate(idx, failure)
                left = self._expiry - loop.time()
                log.log(logging.WARNING if backoff == 0.05 else logging.DEBUG,
                        "keepalive of etcd lease %x failed (%s); retrying, %.1fs left",
                        self.id, short(failure), left)
                await asyncio.sleep(max(0.0, min(backoff, left)))
                backoff = min(backoff * 2, 0.5)
        finally:
            cancel(call)

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
        self._live.discard(self)

    async def revoke(self) -> None:
        """Stop renewing and revoke the lease now, deleting its keys."""
        await self.stop()
        await self._revoke(self.id)

    def __repr__(self) -> str:
        state = "lost" if self._lost else ("active" if self.active else "stopped")
        return f"<Lease {self.id:x} ttl={self.ttl} {state}>"
