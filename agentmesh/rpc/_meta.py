"""RpcMeta and the decorators that say how a method is called through a proxy."""
from __future__ import annotations

import abc
import functools
import inspect
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_MODE = "_agentmesh_call_mode"
_ASYNC_BY_DEFAULT = frozenset({"reply", "__call__"})


def async_func(func: F) -> F:
    """Mark a method asynchronous on a proxy: it returns an AsyncResult at once."""
    setattr(func, _MODE, "async")
    return func


def sync_func(func: F) -> F:
    """Mark a method synchronous on a proxy: the caller waits for its value."""
    setattr(func, _MODE, "sync")
    return func


@functools.lru_cache(maxsize=None)
def method_table(cls: type) -> dict[str, bool]:
    """Public methods of cls, each mapped to True when it is asynchronous on a proxy."""
    table: dict[str, bool] = {}
    for name in dir(cls):
        if name.startswith("_") and name != "__call__":
            continue
        if name == "to_dist":
            continue
        attr = inspect.getattr_static(cls, name, None)
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if not callable(attr) or isinstance(attr, type):
            continue
        mode = getattr(attr, _MODE, None)
        table[name] = mode == "async" if mode else name in _ASYNC_BY_DEFAULT
    return table


class RpcMeta(abc.ABCMeta):
    """Metaclass of distributable classes: adds ``to_dist`` and the ``to_dist=`` argument.

    ``Cls(..., to_dist=True)`` or ``to_dist={"host": ..., "port": ...}`` builds
    the object on an agent server only and returns its proxy; ``obj.to_dist()``
    clones a local object (by its constructor arguments) onto a server.
    """

    def __new__(mcs, name: str, bases: tuple, namespace: dict, **kwargs: Any) -> type:
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        if not hasattr(cls, "to_dist"):
            cls.to_dist = _to_dist
        return cls

    def __call__(cls, *args: Any, to_dist: Any = None, **kwargs: Any) -> Any:
        if to_dist:
            from ._proxy import create_proxy

            options = {} if to_dist is True else dict(to_dist)
            return create_proxy(cls, args, kwargs, **options)
        obj = super().__call__(*args, **kwargs)
        try:
            object.__setattr__(obj, "_init_settings", (args, kwargs))
        except AttributeError:
            pass
        return obj


def _to_dist(self: Any, host: str | None = None, port: int | str | None = None, **options: Any) -> Any:
    """Clone this object onto an agent server and return its proxy (an RpcObject).

    With host and port: that server (independent mode). Without: the server
    the registry picks, else a child server of this process.
    """
    from ._proxy import create_proxy

    args, kwargs = getattr(self, "_init_settings", ((), {}))
    return create_proxy(type(self), args, kwargs, host=host, port=port, **options)
