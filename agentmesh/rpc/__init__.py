"""The client side: proxies, placeholders and the decorators that shape calls."""
from ._meta import RpcMeta, async_func, sync_func
from ._proxy import RpcObject
from ._result import AsyncResult

__all__ = ["RpcObject", "AsyncResult", "async_func", "sync_func", "RpcMeta"]
