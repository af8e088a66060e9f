"""User/password authentication: the token sent with every call, and its renewal."""
from __future__ import annotations

import asyncio
import logging

from agentmesh.etcdv3 import etcd_pb2 as pb

from ._endpoints import Endpoints, Metadata
from ._errors import EtcdError

log = logging.getLogger("agentmesh.etcd")


class Auth:
    """The client's credentials and current token.

    ``token`` is None when one must be fetched before the next call, ``""``
    when no auth is in use (no user, or etcd has auth disabled). A token is
    fetched once for all callers waiting on it; etcd drops tokens when it
    restarts or after ``--auth-token-ttl``, and callers then renew it once
    (:meth:`authenticate` with the ``stale`` token they were refused with).
    """

    def __init__(self, endpoints: Endpoints, user: str | None, password: str | None) -> None:
        self.user = user
        self.token: str | None = None if user else ""
        self._password = password or ""
        self._endpoints = endpoints
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_for_loop: asyncio.Lock | None = None

    def metadata(self, streaming: bool = False) -> Metadata:
        """Call metadata: the auth token, and for streams "fail if no leader"."""
        items: list[tuple[str, str]] = []
        if self.token:
            items.append(("token", self.token))
        if streaming:
            items.append(("hasleader", "true"))
        return tuple(items) or None

    def _lock(self) -> asyncio.Lock:
        """The lock serialising authentication, one per event loop."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._lock_for_loop is None:
            self._loop = loop
            self._lock_for_loop = asyncio.Lock()
        return self._lock_for_loop

    async def authenticate(self, deadline: float, stale: str | None) -> None:
        """Get a token (once for all waiting callers) unless someone already renewed ``stale``."""
        async with self._lock():
            if self.token is not None and self.token != stale:
                return
            self.token = None
            request = pb.AuthenticateRequest(name=self.user or "", password=self._password)
            try:
                response, _ = await self._endpoints.call("Authenticate", request, auth=None,
                                                         deadline=deadline)
            except EtcdError as err:
                if "authentication is not enabled" in str(err):
                    log.warning("etcd auth is not enabled; ignoring user %r", self.user)
                    self.token = ""
                    return
                raise
            self.token = response.token
            log.debug("authenticated to etcd as %r", self.user)

    async def ensure(self) -> None:
        """Authenticate now if credentials are set and no token is held (for streams)."""
        self._endpoints.bind()
        if self.token is None:
            await self.authenticate(asyncio.get_running_loop().time() + self._endpoints.timeout,
                                    None)

    async def renew(self, stale: str | None) -> None:
        """Replace a token a stream was refused with (for streams)."""
        await self.authenticate(asyncio.get_running_loop().time() + self._endpoints.timeout,
                                stale)
