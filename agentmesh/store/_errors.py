"""The errors of the state stores; each names the store by its URL with any secret removed."""
from __future__ import annotations

from ..errors import AgentMeshError


class StoreError(AgentMeshError):
    """A state store could not do what was asked; the message says which store and why."""


class StoreUrlError(StoreError, ValueError):
    """A state store URL (or its password file) the library cannot use; refused before anything is opened."""


class StoreUnavailableError(StoreError):
    """The store could not be reached, opened or authenticated against (it may work again later)."""


class SchemaVersionError(StoreError):
    """The store's schema is newer than this code knows (written by a later agentmesh)."""


class NameTakenError(StoreError):
    """An agent of that name already lives in the namespace."""

    def __init__(self, message: str, namespace: str = "", name: str = "") -> None:
        super().__init__(message)
        self.namespace = namespace
        self.name = name

    def __reduce__(self):  # keep the namespace and name across pickling
        return (type(self), (self.args[0] if self.args else "", self.namespace, self.name))


class NoSuchAgentError(StoreError, LookupError):
    """The store holds no agent with that id."""
