"""The registry's key layout (documented in docs/registry.md)."""
from __future__ import annotations

ROOT = "/agentmesh"


def servers_prefix(namespace: str) -> str:
    """Prefix of the server records of a namespace."""
    return f"{ROOT}/{namespace}/servers/"


def server_key(namespace: str, server_id: str) -> str:
    """A server's record: JSON, attached to the server's lease."""
    return servers_prefix(namespace) + server_id


def agents_prefix(namespace: str) -> str:
    """Prefix of the agent records of a namespace."""
    return f"{ROOT}/{namespace}/agents/"


def agent_key(namespace: str, agent_id: str) -> str:
    """An agent's record (name, class, server): JSON, attached to its server's lease."""
    return agents_prefix(namespace) + agent_id
