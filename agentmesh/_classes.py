"""Client side: a class is pickled once and shipped once to each server (by reference, or by value)."""
from __future__ import annotations

import hashlib
import threading

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

    def ref(self, cls: type, server_key: str, by_value: bool = False) -> pb.ClassRef:
        """A ClassRef for cls: with the blob only the first time for this server.

        by_value ships the class's code even when its module is importable
        here (the server could not import it).
        """
        with self._lock:
            entry = self._refs.get((cls, by_value))
            if entry is None:
                blob = _codec.dumps_by_value(cls, cls.__module__) if by_value else _codec.dumps(cls)
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


#: set on a method marked ``interleave=True``: it runs as soon as it arrives, beside the agent's other calls
INTERLEAVE = "_agentmesh_interleave"


def interleaves(cls: type, name: str) -> bool:
    """True when method name of cls was marked ``@sync_func(interleave=True)`` (or ``async_func``)."""
    return bool(getattr(getattr(cls, name, None), INTERLEAVE, False))
