"""The server's gate: versions, then the caller's ticket, are checked before any handler runs.

The server answers the Handshake (proving it holds the namespace key without
sending it) and checks on every other RPC the ticket the caller made from it.
The health service stays open for probes. Refusals are logged with the
peer's address, at most one line per reason every ten seconds.
"""
from __future__ import annotations

import collections
import hmac
import logging
import time
from typing import Awaitable, Callable

import grpc

from .. import _protocol, _status, _trust
from ..v1 import agent_server_pb2 as pb

log = logging.getLogger("agentmesh.server")

_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_HANDSHAKE = "/agentmesh.v1.AgentServer/Handshake"
#: verified tickets remembered, so a caller's unary RPCs cost no HMAC after the first
_TICKET_CACHE = 4096


def _shown(value: str | None) -> str:
    """A caller-supplied value, safe and short enough for a log line."""
    return "".join(c if c.isprintable() else "?" for c in value[:40]) if value else "nothing"


class Credentials:
    """A server's side of the handshake: its id, namespace, key (None without a token) and nonces."""

    def __init__(self, server_id: str, namespace: str, token: str | None) -> None:
        self.server_id = server_id
        self.namespace = namespace
        self.key = _trust.namespace_key(token, namespace) if token else None
        self._nonces = _trust.ServerNonces()
        self._verified: collections.OrderedDict[str, None] = collections.OrderedDict()

    def answer(self, request: pb.HandshakeRequest) -> pb.HandshakeResponse | tuple[int, str]:
        """The server's proof for this challenge, or (status, why) when the caller must be refused."""
        if self.key is not None and request.namespace != self.namespace:
            return (pb.UNAUTHENTICATED, f"this agent server serves namespace {self.namespace!r}, the caller is in "
                                        f"namespace {_shown(request.namespace)!r}; a token is valid in its own "
                                        f"namespace only")
        if len(request.client_nonce) != _trust.NONCE_SIZE:
            return pb.UNAUTHENTICATED, f"the handshake needs a {_trust.NONCE_SIZE}-byte client nonce"
        server_nonce = self._nonces.issue(request.client_nonce)
        proof = (_trust.server_proof(self.key, request.client_nonce, server_nonce, self.server_id, self.namespace)
                 if self.key is not None else b"")
        return pb.HandshakeResponse(server_id=self.server_id, namespace=self.namespace, server_nonce=server_nonce,
                                    proof=proof)

    def check_ticket(self, value: str) -> str | None:
        """Why this ticket does not authenticate its bearer, or None when it does."""
        if value in self._verified:
            return None
        parts = _trust.parse_ticket(value) if value else None
        if parts is None:
            return ("missing token: this agent server requires one (token=, --token-file or AGENTMESH_TOKEN_FILE) "
                    "and a handshake first" if not value else "malformed authentication ticket")
        client_nonce, server_nonce, proof = parts
        if not self._nonces.valid(client_nonce, server_nonce):
            return "the ticket was not issued by this agent server (it restarted, or the ticket is forged)"
        expected = _trust.client_proof(self.key, client_nonce, server_nonce,  # type: ignore[arg-type]
                                       self.server_id, self.namespace)
        if not hmac.compare_digest(proof, expected):
            return f"wrong token for this agent server (namespace {self.namespace!r})"
        self._verified[value] = None
        if len(self._verified) > _TICKET_CACHE:
            self._verified.popitem(last=False)
        return None


def check_metadata(metadata: dict[str, str], credentials: Credentials, method: str = "") -> tuple[int, str] | None:
    """Why a caller with this metadata must be refused, or None when it may proceed."""
    protocol = metadata.get(_protocol.MD_PROTOCOL)
    if protocol != _protocol.PROTOCOL_VERSION:
        return (pb.VERSION_MISMATCH,
                f"protocol version mismatch: caller speaks {_shown(protocol)}, "
                f"server speaks {_protocol.PROTOCOL_VERSION}")
    python = metadata.get(_protocol.MD_PYTHON)
    if python != _protocol.PYTHON_VERSION:
        return (pb.VERSION_MISMATCH,
                f"Python version mismatch: caller runs {_shown(python)}, server runs "
                f"{_protocol.PYTHON_VERSION}; pickled code is not portable across minor versions")
    pickle_major = metadata.get(_protocol.MD_PICKLE)
    if pickle_major != _protocol.CLOUDPICKLE_MAJOR:
        return (pb.VERSION_MISMATCH,
                f"cloudpickle version mismatch: caller has {_shown(pickle_major)}.x, "
                f"server has {_protocol.CLOUDPICKLE_MAJOR}.x")
    if credentials.key is not None and method != _HANDSHAKE:
        problem = credentials.check_ticket(metadata.get(_protocol.MD_AUTH, ""))
        if problem is not None:
            return pb.UNAUTHENTICATED, problem
    return None


class RefusalLog:
    """One WARNING per refusal reason every interval seconds, naming the peer and how many more there were."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[int, float] = {}
        self._suppressed: collections.Counter[int] = collections.Counter()

    def refused(self, status: int, method: str, peer: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(status)
        if last is not None and now - last < self.interval:
            self._suppressed[status] += 1
            return
        self._last[status] = now
        more = self._suppressed.pop(status, 0)
        log.warning("refused %s from %s: %s%s", method, peer, message,
                    f" ({more} more refusal(s) for this reason in the last {now - last:.0f} s)" if more and last
                    else "")


def _refusal(handler: grpc.RpcMethodHandler, status: int, message: str, method: str,
             refusals: RefusalLog) -> grpc.RpcMethodHandler:
    async def refuse(_request, context: grpc.aio.ServicerContext) -> None:
        refusals.refused(status, method, context.peer(), message)
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

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.refusals = RefusalLog()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN_PREFIXES):
            return handler
        problem = check_metadata(dict(details.invocation_metadata or ()), self.credentials, details.method)
        if problem is None:
            return handler
        return _refusal(handler, *problem, details.method, self.refusals)
