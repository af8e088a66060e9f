"""The server's gate: protocol, Python version and token are checked before any handler runs."""
from __future__ import annotations

import hmac
import logging
from typing import Awaitable, Callable

import grpc

from .. import _protocol
from .. import _status
from ..v1 import agent_server_pb2 as pb

log = logging.getLogger("agentmesh.server")

_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def check_metadata(metadata: dict[str, str], token: str | None) -> tuple[int, str] | None:
    """Why a caller with this metadata must be refused, or None when it may proceed."""
    if token is not None:
        given = metadata.get(_protocol.MD_TOKEN, "")
        if not given:
            return pb.UNAUTHENTICATED, "missing token: this agent server requires one (token=, --token or AGENTMESH_TOKEN)"
        if not hmac.compare_digest(given.encode(), token.encode()):
            return pb.UNAUTHENTICATED, "wrong token for this agent server"
    protocol = metadata.get(_protocol.MD_PROTOCOL)
    if protocol != _protocol.PROTOCOL_VERSION:
        return (pb.VERSION_MISMATCH,
                f"protocol version mismatch: caller speaks {protocol or 'nothing'}, "
                f"server speaks {_protocol.PROTOCOL_VERSION}")
    python = metadata.get(_protocol.MD_PYTHON)
    if python != _protocol.PYTHON_VERSION:
        return (pb.VERSION_MISMATCH,
                f"Python version mismatch: caller runs {python or 'unknown'}, server runs "
                f"{_protocol.PYTHON_VERSION}; pickled code is not portable across minor versions")
    pickle_major = metadata.get(_protocol.MD_PICKLE)
    if pickle_major != _protocol.CLOUDPICKLE_MAJOR:
        return (pb.VERSION_MISMATCH,
                f"cloudpickle version mismatch: caller has {pickle_major or 'unknown'}.x, "
                f"server has {_protocol.CLOUDPICKLE_MAJOR}.x")
    return None


def _refusal(handler: grpc.RpcMethodHandler, status: int, message: str) -> grpc.RpcMethodHandler:
    async def refuse(_request, context: grpc.aio.ServicerContext) -> None:
        await context.abort(_status.TABLE[status].code, message, _status.trailing(status))

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class Gate(grpc.aio.ServerInterceptor):
    """Refuses unauthenticated or incompatible callers; the health service stays open."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN_PREFIXES):
            return handler
        problem = check_metadata(dict(details.invocation_metadata or ()), self._token)
        if problem is None:
            return handler
        log.warning("refused %s: %s", details.method, problem[1])
        return _refusal(handler, *problem)
