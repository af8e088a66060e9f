"""Health answers for callers that have not authenticated: probes (Kubernetes, grpc_health_probe, `agentmesh servers`).

They get the server's overall status without their request body being read
(a probe's body names a service, and every service of an agent server has the
same status), so a body costs nothing; open watches are capped. Authenticated
callers (proxies) reach the standard health servicer itself.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import grpc
from grpc_health.v1 import health_pb2

#: open (unauthenticated) Watch streams at once; more are refused
MAX_OPEN_WATCHES = 256


class OpenHealth:
    """The server's overall serving status, answered to unauthenticated health RPCs without reading them."""

    PREFIX = "/grpc.health.v1.Health/"

    def __init__(self) -> None:
        self.status = health_pb2.HealthCheckResponse.NOT_SERVING
        self.watches = 0
        self._changed: asyncio.Event | None = None
        serialize = health_pb2.HealthCheckResponse.SerializeToString
        self._handlers = {
            self.PREFIX + "Check": grpc.stream_unary_rpc_method_handler(self._check, response_serializer=serialize),
            self.PREFIX + "Watch": grpc.stream_stream_rpc_method_handler(self._watch, response_serializer=serialize),
        }

    def set(self, status: int) -> None:
        """The server's status changed (on its I/O loop): open watchers hear of it."""
        self.status = status
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def handler(self, method: str) -> grpc.RpcMethodHandler | None:
        """The handler of a health method for an unauthenticated caller (None: no such method)."""
        return self._handlers.get(method)

    async def _check(self, _requests: Any, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=self.status)

    async def _watch(self, _requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if self.watches >= MAX_OPEN_WATCHES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many unauthenticated health watches ({MAX_OPEN_WATCHES}); use Check")
        self.watches += 1
        try:
            while True:
                status = self.status
                yield health_pb2.HealthCheckResponse(status=status)
                while self.status == status:
                    if self._changed is None:
                        self._changed = asyncio.Event()
                    await self._changed.wait()
        finally:
            self.watches -= 1
