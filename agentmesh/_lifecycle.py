"""agentmesh.shutdown(): let go of everything this process holds in the mesh, now rather than at exit."""
from __future__ import annotations

from .rpc import _connection, _loop, _proxy


def shutdown() -> None:
    """Delete the agents this process created, close its sessions and registry views, stop its child servers.

    The same happens at interpreter exit; call it to release servers' capacity
    earlier, or before stopping servers that still host this process's agents
    (so they are not moved elsewhere first). Proxies used afterwards find their
    agent gone (``UnknownAgentError``).
    """
    from .discovery import _placement
    from .server._child import child_pool

    _loop.run_sync(_proxy._delete_owned())
    _loop.run_sync(_placement._close_views())
    _loop.run_sync(_connection._close_all())
    child_pool.stop()
