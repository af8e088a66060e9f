"""AgentScope's distributed-mode exception names (``agentscope.exception``), as agentmesh's own errors.

Code that catches ``AgentCallError`` or ``AgentServerNotAliveError`` after
renaming the package catches the errors agentmesh raises for the same events.
"""
from __future__ import annotations

from .errors import (AgentCallError, AgentCreationError, AgentMeshError, ServerUnavailableError,
                     UnknownMethodError)

#: the base of every error of the mesh (AgentScope: of its agent-server errors)
AgentServerError = AgentMeshError
#: the server cannot be reached
AgentServerNotAliveError = ServerUnavailableError
#: the agent has no such public method
AgentServerUnsupportedMethodError = UnknownMethodError

__all__ = ["AgentServerError", "AgentServerNotAliveError", "AgentCreationError", "AgentCallError",
           "AgentServerUnsupportedMethodError"]
