"""The client side: proxies, placeholders and the decorators that shape calls."""
from .._result import AsyncResult
from ._meta import RpcMeta
from ._methods import async_func, sync_func
from ._proxy import RpcObject

__all__ = ["RpcObject", "AsyncResult", "async_func", "sync_func", "RpcMeta"]
