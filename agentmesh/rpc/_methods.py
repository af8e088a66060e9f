"""How each method of a distributable class is called through a proxy: asynchronously or not."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

from .._classes import INTERLEAVE

F = TypeVar("F", bound=Callable[..., Any])

_MODE = "_agentmesh_call_mode"
_ASYNC_BY_DEFAULT = frozenset({"reply", "__call__"})
#: the mode of a generator method: the proxy returns a ReplyStream at once
STREAM = "stream"


def _marker(mode: str, func: Any, interleave: bool) -> Any:
    def mark(f: F) -> F:
        setattr(f, _MODE, mode)
        if interleave:
            setattr(f, INTERLEAVE, True)
        return f

    return mark(func) if func is not None else mark


def async_func(func: F | None = None, *, interleave: bool = False) -> Any:
    """Mark a method asynchronous on a proxy: it returns an AsyncResult at once.

    ``@async_func(interleave=True)``: see ``sync_func``.
    """
    return _marker("async", func, interleave)


def sync_func(func: F | None = None, *, interleave: bool = False) -> Any:
    """Mark a method synchronous on a proxy: the caller waits for its value.

    ``@sync_func(interleave=True)`` lets the method run while the agent's other
    calls run (like Orleans' ``[AlwaysInterleave]``), for status queries during
    a long call. Calls of one agent otherwise run one at a time, in order. An
    interleaving method must not change the agent's state: it is not counted
    in checkpoints, and a failover may run it again.
    """
    return _marker("sync", func, interleave)


@functools.lru_cache(maxsize=None)
def method_table(cls: type) -> dict[str, bool | str]:
    """Public methods of cls, each mapped to True when it is asynchronous on a proxy (memoised per class):
    marked @async_func, reply and __call__, and every ``async def`` method; STREAM for a generator (or async
    generator) method, which returns a ReplyStream."""
    table: dict[str, bool | str] = {}
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
        if inspect.isgeneratorfunction(attr) or inspect.isasyncgenfunction(attr):
            table[name] = STREAM
            continue
        mode = getattr(attr, _MODE, None)
        table[name] = mode == "async" if mode else (name in _ASYNC_BY_DEFAULT or inspect.iscoroutinefunction(attr))
    return table
