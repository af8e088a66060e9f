"""The client's class cache: a class is pickled once and shipped once to each server (by reference, or by value).

The server's end, which loads and keeps the classes it is sent, is ``server/_classes.py``."""
from __future__ import annotations

import hashlib
import re
import threading
from typing import Iterable

from . import _codec
from .v1 import agent_server_pb2 as pb


def class_name(cls: type) -> str:
    """"module:QualName", how the mesh names a class."""
    return f"{cls.__module__}:{cls.__qualname__}"


class ClassCache:
    """Pickles of classes, and which servers already have each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[tuple[type, bool], tuple[str, str, bytes]] = {}
        self._shipped: set[tuple[str, str]] = set()
        self._modules: dict[type, tuple[str, ...]] = {}   # class -> the modules shipped with it (py_modules=)

    def ship_with(self, cls: type, modules: Iterable[str]) -> None:
        """Ship cls by value from now on, with the code of these modules (by name) in its pickle, so that a
        server needs none of them (py_modules=). They add up per class; a module not shipped with it before
        makes a new pickle, so a new digest, which each server is sent once."""
        with self._lock:
            known = self._modules.get(cls, ())
            added = tuple(name for name in modules if name not in known)
            if added:
                self._modules[cls] = known + added
                self._refs.pop((cls, False), None)
                self._refs.pop((cls, True), None)

    def by_value(self, cls: type) -> bool:
        """True when cls goes by value whatever the server can import (it was given modules to ship)."""
        return cls in self._modules

    def ref(self, cls: type, server_key: str, by_value: bool = False) -> pb.ClassRef:
        """A ClassRef for cls: with the blob only the first time for this server.

        by_value ships the class's code even when its module is importable
        here (the server could not import it); so does a class given modules
        to ship with it, whose code travels in the same pickle.
        """
        with self._lock:
            modules = self._modules.get(cls, ())
            by_value = by_value or bool(modules)
            entry = self._refs.get((cls, by_value))
            if entry is None:
                blob = _codec.dumps_by_value(cls, cls.__module__, *modules) if by_value else _codec.dumps(cls)
                entry = (class_name(cls), hashlib.sha256(blob).hexdigest(), blob)
                self._refs[(cls, by_value)] = entry
            name, digest, blob = entry
            if (server_key, digest) in self._shipped:
                return pb.ClassRef(name=name, digest=digest)
            return pb.ClassRef(name=name, digest=digest, blob=blob)

    def mark_shipped(self, server_key: str, digest: str) -> None:
        """The server has the class now."""
        with self._lock:
            self._shipped.add((server_key, digest))

    def forget(self, server_key: str, digest: str) -> None:
        """The server lost the class (restarted): ship it again next time."""
        with self._lock:
            self._shipped.discard((server_key, digest))


def py_modules_hint(message: str) -> str:
    """What to add to a class refusal that names a module missing on the server: ship it with py_modules=."""
    missing = re.search(r"No module named '([^']+)'", message)
    if missing is None:
        return ""
    name = missing.group(1)
    return (f". The class went by value, but its code uses module {name!r}, which that server cannot import: "
            f"install it there, or ship it with the class: to_dist(py_modules=[{name}]) or "
            f"agentmesh.init(py_modules=[{name}])")


#: set on a method marked ``interleave=True``: it runs as soon as it arrives, beside the agent's other calls
INTERLEAVE = "_agentmesh_interleave"


def interleaves(cls: type, name: str) -> bool:
    """True when method name of cls was marked ``@sync_func(interleave=True)`` (or ``async_func``)."""
    return bool(getattr(getattr(cls, name, None), INTERLEAVE, False))
