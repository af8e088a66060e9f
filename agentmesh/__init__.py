"""agentmesh: run the agents of one application across processes and machines.

A small public API over private modules; see README.md and SPEC.md.
"""
__version__ = "0.1.0"

from ._grpc_tuning import tune_grpc as _tune_grpc

_tune_grpc()   # before anything imports grpc: it reads its configuration once, on import

from . import errors
from ._config import init
from ._lifecycle import shutdown
from .agents import AgentBase
from .errors import AgentCallError, AgentCreationError
from .message import Msg
from .rpc import AsyncResult, RpcMeta, RpcObject, async_func, sync_func
from .server import RpcAgentServerLauncher

__all__ = [
    "__version__",
    "init",
    "shutdown",
    "AgentBase",
    "Msg",
    "RpcObject",
    "AsyncResult",
    "RpcMeta",
    "async_func",
    "sync_func",
    "RpcAgentServerLauncher",
    "AgentCallError",
    "AgentCreationError",
    "errors",
]
