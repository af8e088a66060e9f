"""The one status table: reply status <-> gRPC status code <-> agentmesh exception.

Servers refuse with a ReplyStatus: in a Reply on the session stream, or as
the trailing metadata ``x-agentmesh-status`` of an aborted RPC. Clients turn
either back into the exception of the same row; nothing is matched by text.
"""
from __future__ import annotations

import traceback
from typing import NamedTuple

import grpc

from . import errors
from ._protocol import MD_STATUS
from .v1 import agent_server_pb2 as pb


class Row(NamedTuple):
    code: grpc.StatusCode
    error: type[errors.AgentMeshError]


S = grpc.StatusCode
TABLE: dict[int, Row] = {
    pb.ERROR: Row(S.UNKNOWN, errors.AgentCallError),
    pb.UNKNOWN_AGENT: Row(S.NOT_FOUND, errors.UnknownAgentError),
    pb.UNKNOWN_METHOD: Row(S.NOT_FOUND, errors.UnknownMethodError),
    pb.BAD_PAYLOAD: Row(S.INVALID_ARGUMENT, errors.PayloadError),
    pb.TOO_LARGE: Row(S.RESOURCE_EXHAUSTED, errors.MessageTooLargeError),
    pb.STALE_EPOCH: Row(S.FAILED_PRECONDITION, errors.StaleEpochError),
    pb.OVERLOADED: Row(S.RESOURCE_EXHAUSTED, errors.BackpressureError),
    pb.EXPIRED: Row(S.NOT_FOUND, errors.ResultExpiredError),
    pb.UNAVAILABLE: Row(S.UNAVAILABLE, errors.AgentCallError),
    pb.CAPACITY: Row(S.RESOURCE_EXHAUSTED, errors.CapacityError),
    pb.CLASS_NOT_FOUND: Row(S.NOT_FOUND, errors.ClassNotFoundError),
    pb.CREATION_FAILED: Row(S.INVALID_ARGUMENT, errors.AgentCreationError),
    pb.CLASS_NOT_SENT: Row(S.FAILED_PRECONDITION, errors.ClassNotFoundError),
    pb.UNAUTHENTICATED: Row(S.UNAUTHENTICATED, errors.AuthenticationError),
    pb.VERSION_MISMATCH: Row(S.FAILED_PRECONDITION, errors.VersionMismatchError),
}
#: the error_type a reply of each status carries when the server made it (not the agent)
_ERROR_TYPES = {status: row.error.__name__ for status, row in TABLE.items()}
_ERROR_TYPES[pb.UNAVAILABLE] = "ServerUnavailableError"
_TRANSPORT = (S.UNAVAILABLE, S.DEADLINE_EXCEEDED, S.CANCELLED)


#: each reply status's name, looked up once
_NAMES: dict[int, str] = {value.number: value.name for value in pb.ReplyStatus.DESCRIPTOR.values}


def name(status: int) -> str:
    """The status's name in the proto ("CAPACITY"); metrics count replies under it."""
    return _NAMES.get(status) or pb.ReplyStatus.Name(status)


def refusal(call_id: str, status: int, message: str, error_type: str = "") -> pb.Reply:
    """A reply that refuses a call with status."""
    return pb.Reply(call_id=call_id, status=status, error_message=message,
                    error_type=error_type or _ERROR_TYPES.get(status, "AgentCallError"))


def raised(call_id: str, exc: BaseException) -> pb.Reply:
    """The reply of a call whose method raised exc (its type, message and traceback go back)."""
    return pb.Reply(call_id=call_id, status=pb.ERROR, error_type=type(exc).__qualname__, error_message=str(exc),
                    traceback="".join(traceback.format_exception(exc)))


def trailing(status: int) -> tuple[tuple[str, str], ...]:
    """Trailing metadata naming why an RPC was refused."""
    return ((MD_STATUS, name(status)),)


def status_of(exc: grpc.RpcError) -> int | None:
    """The ReplyStatus a refused RPC carried in its trailing metadata, or None (not refused by agentmesh)."""
    try:
        metadata = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - an RPC error without metadata
        return None
    for key, value in metadata:
        if key == MD_STATUS:
            try:
                return pb.ReplyStatus.Value(value)
            except ValueError:
                return None
    return None


def reply_error(reply: pb.Reply, agent_id: str = "", method: str = "", name: str = "") -> errors.AgentMeshError:
    """The exception a failed reply stands for; the message names the agent by name (when known) and id."""
    cls = TABLE.get(reply.status, TABLE[pb.ERROR]).error
    if not issubclass(cls, errors.AgentCallError):    # the agent was never created
        return cls(f"{errors.agent_label(agent_id, name)} could not be created: {reply.error_message}")
    if reply.status == pb.ERROR:
        message = f"{reply.error_type}: {reply.error_message}" if reply.error_message else reply.error_type
        if method:
            message = f"{method}() on {errors.agent_label(agent_id, name)} raised {message}"
    else:
        message = reply.error_message or name(reply.status)
    return cls(message, remote_type=reply.error_type, remote_traceback=reply.traceback,
               agent_id=agent_id, method=method)


def creation_status(exc: BaseException) -> int:
    """The reply status of a creation that failed with exc, so that the calls waiting for it raise the same
    exception (ClassNotFoundError: CLASS_NOT_FOUND); UNAVAILABLE for an error that is not a creation's."""
    if isinstance(exc, errors.AgentCreationError):
        for status, row in TABLE.items():
            if type(exc) is row.error:
                return status
    return pb.UNAVAILABLE


def _tls_hint(detail: str, tls: bool | None = None, client_cert: bool = False) -> str:
    """What a failed connection's detail most likely means for TLS, or "". tls: whether this side dialled
    with TLS (None: not known), client_cert: with a client certificate. A server that ends the connection
    during the handshake ("Socket closed") looks the same to a plaintext client of a TLS server and to a
    TLS client without the certificate a mutual-TLS server requires: only this side's TLS tells them apart."""
    if "unsupported certificate purpose" in detail:
        return (" (its certificate is not a server certificate: it lacks extendedKeyUsage serverAuth, e.g. "
                "a client certificate; serve with a server certificate such as make-local-ca's server.crt)")
    if "Hostname Verification" in detail:
        return (" (its certificate does not name the address dialled: issue it for that host, e.g. "
                "scripts/make-local-ca --host NAME)")
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        return " (its certificate does not chain to the CA this client trusts: tls_ca, AGENTMESH_TLS_CA)"
    if "Socket closed" not in detail and "handshake" not in detail.lower():
        return ""
    if tls is None:
        return " (does one side use TLS and the other not? see tls_ca / tls_cert)"
    if not tls:
        return (" (this client dials in plaintext: if the server uses TLS, give the CA its certificate chains to "
                "with tls_ca or AGENTMESH_TLS_CA)")
    if "WRONG_VERSION_NUMBER" in detail:
        return " (this client uses TLS and the server answered in plaintext: serve TLS there with --tls-cert)"
    if "Socket closed" not in detail:
        return ""
    if not client_cert:
        return (" (the server may require a client certificate (mutual TLS), and this client has none: give "
                "tls_cert and tls_key, or AGENTMESH_TLS_CERT and AGENTMESH_TLS_KEY)")
    return (" (the server may not accept this client certificate: is it signed by the CA the server trusts "
            "for clients (--tls-client-ca), with extendedKeyUsage clientAuth?)")


def rpc_error(exc: grpc.aio.AioRpcError, address: str, what: str, tls: bool | None = None,
              client_cert: bool = False) -> errors.AgentMeshError:
    """The agentmesh error an RPC failure means: the server's status if it gave one, else the transport's (with
    what it likely means for TLS, given whether this side dialled with TLS and a client certificate)."""
    code = exc.code()
    detail = exc.details() or code.name
    status = status_of(exc)
    if status is not None:
        cls = TABLE[status].error
        if status == pb.UNAVAILABLE:
            return errors.ServerUnavailableError(f"agent server {address} ({what}): {detail}")
        if what == "agent creation" and issubclass(cls, errors.AgentCallError):
            cls = errors.AgentCreationError
        if status == pb.CAPACITY:
            return cls(f"agent server {address} is full: {detail}")
        if issubclass(cls, errors.AgentCallError):
            return cls(f"agent server {address} ({what}): {detail}")   # type: ignore[call-arg]
        if cls is errors.AuthenticationError:
            return cls(f"agent server {address} refused {what}: {detail}")
        return cls(f"agent server {address}: {detail}")
    if code in _TRANSPORT:
        return errors.ServerUnavailableError(f"agent server {address} is unreachable ({what}): {detail}"
                                             f"{_tls_hint(detail, tls, client_cert)}")
    if code == S.RESOURCE_EXHAUSTED:     # gRPC's own message size limit
        return errors.MessageTooLargeError(f"agent server {address}: {detail}")
    return errors.AgentMeshError(f"agent server {address} ({what}): {code.name}: {detail}")
