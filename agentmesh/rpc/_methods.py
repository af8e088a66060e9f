"""How each method of a distributable class is called through a proxy: asynchronously or not."""
from __future__ import annotations

import enum
import functools
import inspect
from typing import Any, Callable, TypeVar

from .._class_cache import INTERLEAVE

F = TypeVar("F", bound=Callable[..., Any])

_MODE = "_agentmesh_call_mode"
_ASYNC_BY_DEFAULT = frozenset({"reply", "__call__"})


class CallMode(enum.Enum):
    """How a proxy calls a method: waits for its value, returns an AsyncResult at once, or a ReplyStream at once."""

    SYNC = "sync"
    ASYNC = "async"
    STREAM = "stream"   # a generator method: its items arrive as the agent yields them


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
def method_table(cls: type) -> dict[str, CallMode]:
    """Public methods of cls, each mapped to how a proxy calls it (memoised per class): ASYNC when marked
    @async_func, for reply and __call__, and every ``async def`` method; STREAM for a generator (or async
    generator) method; SYNC for the others."""
    table: dict[str, CallMode] = {}
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
            table[name] = CallMode.STREAM
            continue
        mode = getattr(attr, _MODE, None)
        asynchronous = mode == "async" if mode else (name in _ASYNC_BY_DEFAULT or inspect.iscoroutinefunction(attr))
        table[name] = CallMode.ASYNC if asynchronous else CallMode.SYNC
    return table
