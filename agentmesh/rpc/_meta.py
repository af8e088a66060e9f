"""RpcMeta: the metaclass that makes a class distributable (``to_dist`` and the ``to_dist=`` argument)."""
from __future__ import annotations

import abc
from typing import Any

from ._methods import async_func, sync_func  # noqa: F401 - re-exported
from ._proxy import create_proxy

__all__ = ["RpcMeta", "async_func", "sync_func"]


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
    the registry picks, else a child server of this process. The proxy keeps
    the object's ``agent_id``, as in AgentScope.
    """
    args, kwargs = getattr(self, "_init_settings", ((), {}))
    local_id = getattr(self, "agent_id", None)
    if isinstance(local_id, str) and local_id:
        options.setdefault("agent_id", local_id)
    return create_proxy(type(self), args, kwargs, host=host, port=port, **options)
