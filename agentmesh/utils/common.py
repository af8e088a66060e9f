"""AgentScope's ``agentscope.utils.common`` helpers that distributed code uses."""
from __future__ import annotations

import socket


def _find_available_port() -> int:
    """A TCP port free right now (another process may take it before it is used; agentmesh servers take
    ``port=None`` to pick one race-free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]
