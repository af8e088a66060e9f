"""The classes a server hosts: given at start, or shipped by clients (by digest, checked)."""
from __future__ import annotations

import collections
import hashlib
import logging

from .. import _codec
from .._config import DEFAULT_MAX_CLASS_BYTES, DEFAULT_MAX_CLASSES
from ..v1 import agent_server_pb2 as pb

log = logging.getLogger("agentmesh.server")


class ClassNotSent(LookupError):
    """The server does not have that digest and the request carried no class."""


class HostedClasses:
    """Classes by digest of their pickle: those given at start for good, shipped ones in a bounded LRU cache.

    Agents hold their own class, so evicting one hurts no agent; the next
    creation that names only its digest gets CLASS_NOT_SENT and its client
    sends the class again.
    """

    def __init__(self, classes: list[type], allow_shipped: bool = True, max_classes: int = DEFAULT_MAX_CLASSES,
                 max_bytes: int = DEFAULT_MAX_CLASS_BYTES) -> None:
        self.allow_shipped = allow_shipped
        self.max_classes = max_classes
        self.max_bytes = max_bytes
        self._given: dict[str, type] = {}
        self._shipped: collections.OrderedDict[str, tuple[type, int]] = collections.OrderedDict()
        self.shipped_bytes = 0   # sum of the shipped classes' pickles
        self.names: list[str] = []
        for cls in classes:
            self._given[hashlib.sha256(_codec.dumps(cls)).hexdigest()] = cls
            self.names.append(f"{cls.__module__}:{cls.__qualname__}")

    def __len__(self) -> int:
        """How many shipped classes are cached."""
        return len(self._shipped)

    def resolve(self, ref: pb.ClassRef) -> type:
        """The class ref names; ClassNotSent, LookupError or another error when it cannot be had here."""
        cls = self._given.get(ref.digest)
        if cls is not None:
            return cls
        entry = self._shipped.get(ref.digest)
        if entry is not None:
            self._shipped.move_to_end(ref.digest)
            return entry[0]
        if not ref.blob:
            raise ClassNotSent("unknown class digest: send the class")
        if not self.allow_shipped:
            raise LookupError(f"class {ref.name} is not hosted here (hosted: {', '.join(self.names) or 'none'})")
        if hashlib.sha256(ref.blob).hexdigest() != ref.digest:
            raise ValueError(f"class {ref.name}: blob does not match its digest")
        cls = _codec.loads(ref.blob)
        if not isinstance(cls, type):
            raise TypeError(f"{ref.name} is not a class but {type(cls).__name__}")
        self._keep(ref.digest, cls, len(ref.blob))
        return cls

    def _keep(self, digest: str, cls: type, size: int) -> None:
        """Cache a shipped class, evicting the least recently used beyond the count or byte budget."""
        shipped = self._shipped
        shipped[digest] = (cls, size)
        self.shipped_bytes += size
        while len(shipped) > 1 and (len(shipped) > self.max_classes or self.shipped_bytes > self.max_bytes):
            old_digest, (old, old_size) = shipped.popitem(last=False)
            self.shipped_bytes -= old_size
            log.debug("class cache full (%d classes, %d bytes): evicted %s:%s (%s)", len(shipped),
                      self.shipped_bytes, old.__module__, old.__qualname__, old_digest[:12])
