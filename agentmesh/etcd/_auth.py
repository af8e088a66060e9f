"""User/password authentication: the token sent with every call, and its renewal."""
from __future__ import annotations

import asyncio
import logging

from agentmesh.etcdv3 import etcd_pb2 as pb

from ._endpoints import Endpoints, Metadata
from ._errors import EtcdAuthDisabled, EtcdError

log = logging.getLogger("agentmesh.etcd")


class Auth:
    """The client's credentials and current token.

    ``token`` is None when one must be fetched before the next call, ``""``
    when no auth is in use (no user). A token is fetched once for all callers
    waiting on it; etcd drops tokens when it restarts or after
    ``--auth-token-ttl``, and callers then renew it once (:meth:`authenticate`
    with the ``stale`` token they were refused with). Credentials for an etcd
    with auth turned off raise :class:`EtcdAuthDisabled`.
    """

    def __init__(self, endpoints: Endpoints, user: str | None, password: str | None, url: str = "") -> None:
        """``url`` names the etcd in errors; it never holds the password."""
        self.user = user
        self.token: str | None = None if user else ""
        self._password = password or ""
        self._url = url or ",".join(endpoints.targets)
        self._endpoints = endpoints
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_for_loop: asyncio.Lock | None = None
        self._logged_disabled = False

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
                    raise self._disabled() from None
                raise
            self.token = response.token
            log.debug("authenticated to etcd as %r", self.user)

    def _disabled(self) -> EtcdAuthDisabled:
        """The error for credentials sent to an open etcd (logged once: servers retry registering)."""
        error = EtcdAuthDisabled(
            f"etcd at {self._url} has authentication turned off, but this client was given credentials "
            f"(user {self.user!r}): anyone who can reach that etcd can rewrite the registry. Turn auth on "
            f"in etcd (registry/production-rbac.sh, or etcdctl user add root and etcdctl auth enable; "
            f"`agentmesh registry up` starts a development etcd with auth on), or, if this etcd is meant "
            f"to be open, drop the user and password from the registry URL and AGENTMESH_ETCD_PASSWORD_FILE")
        if not self._logged_disabled:
            self._logged_disabled = True
            log.error("%s", error)
        return error

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
