"""The exceptions agentmesh raises; every one says what was wrong and where."""
from __future__ import annotations


def agent_label(agent_id: str, name: str = "", cls_name: str = "") -> str:
    """How a message names an agent: by its name, with its class and id after it ("agent 'Writer'
    (mymodule:Writer, e68d...)"), so a reader knows which one; by its id when its name is not known."""
    detail = ", ".join(part for part in (cls_name, agent_id) if part)
    if name:
        return f"agent {name!r} ({detail})"
    return f"agent {agent_id} ({cls_name})" if cls_name else f"agent {agent_id}"


class AgentMeshError(Exception):
    """Base class of every agentmesh error."""

    #: on the error of a refused RPC: the reply status the agent server refused it with (None: not a refusal)
    status: int | None = None


class AgentCallError(AgentMeshError):
    """A call to a remote agent failed; carries the remote type name and traceback.

    Raised when the result of the call is used (``.result()``, attribute
    access on an ``AsyncResult``, or at once for synchronous methods).
    """

    def __init__(
        self,
        message: str,
        *,
        remote_type: str = "",
        remote_traceback: str = "",
        agent_id: str = "",
        method: str = "",
    ) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.agent_id = agent_id
        self.method = method

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n--- remote traceback ---\n" + self.remote_traceback.rstrip()
        return text

    def __reduce__(self):  # keep the keyword fields across pickling
        return (
            _rebuild_call_error,
            (type(self), self.args[0] if self.args else "", self.remote_type,
             self.remote_traceback, self.agent_id, self.method),
        )


def _rebuild_call_error(cls, message, remote_type, remote_traceback, agent_id, method):
    return cls(message, remote_type=remote_type, remote_traceback=remote_traceback,
               agent_id=agent_id, method=method)


class UnknownAgentError(AgentCallError):
    """The server hosts no agent with that id (deleted, or never created)."""


class UnknownMethodError(AgentCallError, AttributeError):
    """The agent has no public method of that name."""


class PayloadError(AgentCallError):
    """Arguments or a result could not be pickled or unpickled."""


class MessageTooLargeError(AgentCallError):
    """A message is over the configured size limit (names the limit and the size)."""


class BackpressureError(AgentCallError):
    """Too many calls are pending for one agent; retry later."""


class StaleEpochError(AgentCallError):
    """The server was fenced: the agent has moved to another server."""


class ResultExpiredError(AgentCallError):
    """A call's result is no longer kept by the server that produced it."""


class AgentCreationError(AgentMeshError):
    """An agent could not be created on a server; the message says why."""


class CapacityError(AgentCreationError):
    """The server is full (``RESOURCE_EXHAUSTED``)."""


class ClassNotFoundError(AgentCreationError):
    """The server cannot load the agent's class (and does not accept shipped classes)."""


class ServerUnavailableError(AgentMeshError):
    """No agent server could be reached at the given address."""


class StreamBrokenError(ServerUnavailableError):
    """A streamed reply stopped before its end: its server was lost. ``items``: how many had arrived."""

    def __init__(self, message: str, items: int = 0) -> None:
        super().__init__(message)
        self.items = items


class AuthenticationError(AgentMeshError):
    """The server refused the caller's token (``UNAUTHENTICATED``)."""


class VersionMismatchError(AgentMeshError):
    """Caller and server run different Python minor or protocol versions."""


class RegistryError(AgentMeshError):
    """The registry (etcd) could not be used."""


__all__ = [
    "AgentMeshError",
    "AgentCallError",
    "UnknownAgentError",
    "UnknownMethodError",
    "PayloadError",
    "MessageTooLargeError",
    "BackpressureError",
    "StaleEpochError",
    "ResultExpiredError",
    "AgentCreationError",
    "CapacityError",
    "ClassNotFoundError",
    "ServerUnavailableError",
    "StreamBrokenError",
    "AuthenticationError",
    "VersionMismatchError",
    "RegistryError",
]
