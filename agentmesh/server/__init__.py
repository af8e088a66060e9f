"""The server side: the agent server, its launcher, child servers."""
from .._config import OwnCalls, ServerConfig
from ._classes import classes_in_folder   # the classes an agent_dir holds (for the CLI; not in __all__)
from .launcher import RpcAgentServerLauncher

__all__ = ["OwnCalls", "RpcAgentServerLauncher", "ServerConfig"]
