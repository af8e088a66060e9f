"""The server side: the agent server, its launcher, child servers."""
from .launcher import RpcAgentServerLauncher

__all__ = ["RpcAgentServerLauncher"]
