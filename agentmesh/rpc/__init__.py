"""The client side: proxies, placeholders and the decorators that shape calls."""
from .._placeholder import AsyncResult
from .._reply_stream import ReplyStream
from ._meta import RpcMeta
from ._methods import async_func, sync_func
from ._named import delete_agent
from ._proxy import RpcObject, get_agent, set_local_audience, tell   # the last two: for msghub and agents (not in __all__)
from .retry_strategy import RetryBase, RetryExponential, RetryFixedTimes
from .rpc_client import RpcClient
from .rpc_config import DistConf

__all__ = ["RpcObject", "get_agent", "delete_agent", "RpcClient", "AsyncResult", "ReplyStream", "async_func", "sync_func", "RpcMeta", "DistConf",
           "RetryBase", "RetryFixedTimes", "RetryExponential"]
