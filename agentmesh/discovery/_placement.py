"""Where a new agent goes: the registry's best server, else a child server."""
from __future__ import annotations

import logging
from typing import Any

from .. import errors
from ..rpc import _connection, _loop
from ..rpc._proxy import create_on
from ..server._child import child_pool
from ..v1 import agent_server_pb2 as pb

log = logging.getLogger("agentmesh.discovery")


def place(cls: type, agent_id: str, init_blob: bytes, options: dict[str, Any]
          ) -> tuple[_connection.Connection, pb.CreateAgentResponse]:
    """Create the agent where placement says; returns the connection and the server's answer."""
    return place_in_child(cls, agent_id, init_blob, options)


def place_in_child(cls: type, agent_id: str, init_blob: bytes, options: dict[str, Any]
                   ) -> tuple[_connection.Connection, pb.CreateAgentResponse]:
    """Child mode: the least loaded child server of this process (started on first use)."""
    timeout = options.get("max_timeout_seconds")
    child = child_pool.choose()
    for _ in range(2):
        address = child.wait_ready()

        async def create() -> tuple[_connection.Connection, pb.CreateAgentResponse]:
            conn = await _connection.get_connection(address)
            return conn, await create_on(conn, cls, agent_id, init_blob, timeout)

        try:
            return _loop.run_sync(create())
        except errors.CapacityError:
            child = child_pool.grow()
    raise errors.AgentCreationError("child servers are full")
