"""The server's gate: the caller's ticket, then versions, are checked before any handler runs or any body is read.

The gate answers the Handshake itself from its metadata (proving the server
holds the namespace key, for an address that reaches it, without sending the
key) and checks on every other RPC the ticket the caller made from it. Nothing
an unauthenticated caller sends is read: refusals, the Handshake and the open
health answers never read a request body, handshakes and open health watches
are capped. Refusals are logged with the peer's address, at most one line per
reason every ten seconds.
"""
from __future__ import annotations

import collections
import hmac
import logging
import time
from typing import Any, Awaitable, Callable

import grpc

from .. import _protocol, _status, _trust
from ..v1 import agent_server_pb2 as pb
from ._addresses import AddressBook
from ._open_health import OpenHealth

log = logging.getLogger("agentmesh.server")

_HANDSHAKE = "/agentmesh.v1.AgentServer/Handshake"
_SESSION = "/agentmesh.v1.AgentServer/Session"
#: verified tickets remembered, so a caller's unary RPCs cost no HMAC after the first
_TICKET_CACHE = 4096
#: handshakes answered at once; more are refused (a handshake is quick, unless it resolves a name)
_MAX_HANDSHAKES = 64


def _shown(value: str | None) -> str:
    """A caller-supplied value, safe and short enough for a log line."""
    return "".join(c if c.isprintable() else "?" for c in value[:40]) if value else "nothing"


class Credentials:
    """A server's side of the handshake: its id, namespace, key, addresses and nonces.

    A server has no key only when mutual TLS authenticates its callers (no token was given).
    """

    def __init__(self, server_id: str, namespace: str, token: str | None, addresses: AddressBook) -> None:
        self.server_id = server_id
        self.namespace = namespace
        self.key = _trust.namespace_key(token, namespace) if token else None
        self.addresses = addresses
        self._nonces = _trust.ServerNonces()
        self._verified: collections.OrderedDict[str, float] = collections.OrderedDict()   # ticket -> issued at
        self._sessions: collections.Counter[str] = collections.Counter()   # tickets of open sessions

    async def answer(self, metadata: dict[str, str]) -> pb.HandshakeResponse | tuple[int, str]:
        """The server's proof for the challenge in metadata, or (status, why) when the caller must be refused."""
        namespace, address = metadata.get(_protocol.MD_NAMESPACE, ""), metadata.get(_protocol.MD_ADDRESS, "")
        try:
            client_nonce = bytes.fromhex(metadata.get(_protocol.MD_NONCE, ""))
        except ValueError:
            client_nonce = b""
        if len(client_nonce) != _trust.NONCE_SIZE:
            return (pb.UNAUTHENTICATED, f"the handshake needs a {_trust.NONCE_SIZE}-byte client nonce (hex) in "
                                        f"{_protocol.MD_NONCE}")
        if self.key is not None and namespace != self.namespace:
            return (pb.UNAUTHENTICATED, f"this agent server serves another namespace than {_shown(namespace)!r}; "
                                        f"a token is valid in its own namespace only")
        if not await self.addresses.owns(address):
            return (pb.UNAUTHENTICATED, f"this agent server does not answer to {_shown(address)!r}, the address "
                                        f"the caller says it dialled: something between them relays the "
                                        f"handshake, or the server is reached under an address it was not told "
                                        f"(it answers to {self.addresses.describe()}; see --advertise-host)")
        challenge = _trust.Challenge(client_nonce, namespace, address)
        server_nonce = self._nonces.issue(client_nonce, address)
        proof = _trust.server_proof(self.key, challenge, server_nonce, self.server_id) if self.key else b""
        return pb.HandshakeResponse(server_id=self.server_id, namespace=self.namespace, server_nonce=server_nonce,
                                    proof=proof)

    def check_ticket(self, value: str, opening_session: bool = False) -> str | None:
        """Why this ticket does not authenticate its bearer now, or None when it does.

        A ticket opens RPCs for TICKET_TTL seconds after its handshake, and
        for as long as a session it opened lasts; a session needs a fresh one.
        """
        issued = self._verified.get(value)
        if issued is None:
            problem, issued = self._verify(value)
            if problem is not None:
                return problem
            self._verified[value] = issued
            if len(self._verified) > _TICKET_CACHE:
                self._verified.popitem(last=False)
        if time.time() - issued <= _trust.TICKET_TTL or (not opening_session and self._sessions[value] > 0):
            return None
        return "the ticket has expired (a new handshake makes a new one)"

    def _verify(self, value: str) -> tuple[str | None, float]:
        parts = _trust.parse_ticket(value) if value else None
        if parts is None:
            return ("missing token: this agent server requires a handshake with the namespace token (token=, "
                    "--token-file or AGENTMESH_TOKEN_FILE)" if not value else "malformed authentication ticket"), 0.0
        client_nonce, server_nonce, proof, address = parts
        issued = self._nonces.issued_at(client_nonce, server_nonce, address)
        if issued is None:
            return "the ticket was not issued by this agent server (it restarted, or the ticket is forged)", 0.0
        expected = _trust.client_proof(self.key, _trust.Challenge(client_nonce, self.namespace, address),  # type: ignore[arg-type]
                                       server_nonce, self.server_id)
        if not hmac.compare_digest(proof, expected):
            return "wrong token for this agent server", 0.0
        return None, issued

    def session_opened(self, value: str) -> None:
        """A session opened with this ticket: the ticket stays valid for the caller's other RPCs while it lasts."""
        self._sessions[value] += 1

    def session_closed(self, value: str) -> None:
        self._sessions[value] -= 1
        if self._sessions[value] <= 0:
            del self._sessions[value]


def check_versions(metadata: dict[str, str]) -> tuple[int, str] | None:
    """Why an authenticated caller speaks a protocol, Python or cloudpickle this server cannot trust, or None."""
    protocol = metadata.get(_protocol.MD_PROTOCOL)
    if protocol != _protocol.PROTOCOL_VERSION:
        return (pb.VERSION_MISMATCH, f"protocol version mismatch: caller speaks {_shown(protocol)}, "
                                     f"server speaks {_protocol.PROTOCOL_VERSION}")
    python = metadata.get(_protocol.MD_PYTHON)
    if python != _protocol.PYTHON_VERSION:
        return (pb.VERSION_MISMATCH,
                f"Python version mismatch: caller runs {_shown(python)}, server runs "
                f"{_protocol.PYTHON_VERSION}; pickled code is not portable across minor versions")
    pickle_major = metadata.get(_protocol.MD_PICKLE)
    if pickle_major != _protocol.CLOUDPICKLE_MAJOR:
        return (pb.VERSION_MISMATCH, f"cloudpickle version mismatch: caller has {_shown(pickle_major)}.x, "
                                     f"server has {_protocol.CLOUDPICKLE_MAJOR}.x")
    return None


def check_metadata(metadata: dict[str, str], credentials: Credentials, method: str = "") -> tuple[int, str] | None:
    """Why a caller with this metadata must be refused, or None: authentication first, versions after it."""
    if credentials.key is not None:
        problem = credentials.check_ticket(metadata.get(_protocol.MD_AUTH, ""), opening_session=method == _SESSION)
        if problem is not None:
            return pb.UNAUTHENTICATED, problem
    return check_versions(metadata)


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


def _never_reading(behaviour: Callable[[Any, grpc.aio.ServicerContext], Any], response_streaming: bool,
                   serializer: Callable[[Any], bytes] | None = None) -> grpc.RpcMethodHandler:
    """A handler that takes the request as a stream it never reads, so no body is buffered for it."""
    if response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour, response_serializer=serializer)
    return grpc.stream_unary_rpc_method_handler(behaviour, response_serializer=serializer)


class Gate(grpc.aio.ServerInterceptor):
    """Refuses unauthenticated or incompatible callers before any body is read; answers handshakes and open health."""

    def __init__(self, credentials: Credentials, health: OpenHealth) -> None:
        self.credentials = credentials
        self.health = health
        self.refusals = RefusalLog()
        self._handshakes = 0
        self._handshake = _never_reading(self._answer, False, pb.HandshakeResponse.SerializeToString)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method == _HANDSHAKE:
            return self._handshake
        metadata = dict(details.invocation_metadata or ())
        if method.startswith(OpenHealth.PREFIX):
            if self.credentials.key is None or self.credentials.check_ticket(metadata.get(_protocol.MD_AUTH, "")) \
                    is None:
                return await continuation(details)   # an authenticated caller: the health servicer itself
            return self.health.handler(method)
        handler = await continuation(details)
        if handler is None:
            return handler
        problem = check_metadata(metadata, self.credentials, method)
        if problem is None:
            return handler
        return self._refusal(*problem, method, handler.response_streaming)

    def _refusal(self, status: int, message: str, method: str, response_streaming: bool) -> grpc.RpcMethodHandler:
        async def refuse(_requests: Any, context: grpc.aio.ServicerContext) -> None:
            self.refusals.refused(status, method, context.peer(), message)
            await context.abort(_status.TABLE[status].code, message, _status.trailing(status))

        return _never_reading(refuse, response_streaming)

    async def _answer(self, _requests: Any, context: grpc.aio.ServicerContext) -> pb.HandshakeResponse:
        if self._handshakes >= _MAX_HANDSHAKES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many handshakes at once; try again")
        self._handshakes += 1
        try:
            answer = await self.credentials.answer(dict(context.invocation_metadata() or ()))
        finally:
            self._handshakes -= 1
        if isinstance(answer, tuple):
            status, message = answer
            self.refusals.refused(status, _HANDSHAKE, context.peer(), message)
            await context.abort(_status.TABLE[status].code, message, _status.trailing(status))
        return answer
