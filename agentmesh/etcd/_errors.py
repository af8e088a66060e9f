"""The client's errors, and how etcd's gRPC errors map onto them."""
from __future__ import annotations

import grpc

from agentmesh.errors import RegistryError

# Worth another endpoint (or another try on the same one).
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# etcd's texts for a token that must be renewed (ErrGRPCInvalidAuthToken,
# ErrGRPCAuthOldRevision), and for a request sent without one.
TOKEN_ERRORS = ("invalid auth token", "auth store is old", "auth-old-revision",
                "user name is empty")
AUTH_ERRORS = TOKEN_ERRORS + ("authentication failed", "permission denied",
                              "user name not found", "invalid user id or password")


class EtcdError(RegistryError):
    """etcd refused or failed a request; ``code`` is the gRPC status code if any."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered within the client's timeout."""


class EtcdAuthError(EtcdError):
    """etcd refused the credentials, or requires some and none were given."""


class EtcdAuthDisabled(EtcdAuthError):
    """Credentials were given, but etcd has authentication turned off: anyone could write to it."""


class StreamBroken(Exception):
    """A stream ended or stopped answering; reopen it (on the next endpoint)."""


def translate(what: str, err: grpc.aio.AioRpcError) -> EtcdError:
    """An etcd gRPC error as an EtcdError (EtcdAuthError for auth refusals)."""
    details = err.details() or ""
    code = err.code()
    message = f"etcd {what} failed: {details or code.name} ({code.name})"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
            text in details.lower() for text in AUTH_ERRORS):
        return EtcdAuthError(message, code)
    return EtcdError(message, code)


def is_token_error(err: grpc.aio.AioRpcError) -> bool:
    """Whether a fresh token may fix this error."""
    details = (err.details() or "").lower()
    return any(text in details for text in TOKEN_ERRORS)


def short(reason: object) -> str:
    """A one-line description of an error for logs and messages."""
    if isinstance(reason, grpc.aio.AioRpcError):
        return f"{reason.code().name}: {reason.details()}"
    if isinstance(reason, (EtcdError, StreamBroken)):
        return str(reason)
    return f"{type(reason).__name__}: {reason}".rstrip(": ")
