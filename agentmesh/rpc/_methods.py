"""How each method of a distributable class is called through a proxy: asynchronously or not."""
from __future__ import annotations

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
    """Public methods of cls, each mapped to True when it is asynchronous on a proxy (memoised per class)."""
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
