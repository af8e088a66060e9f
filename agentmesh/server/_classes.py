"""The classes a server hosts: given at start, or shipped by clients (by digest, checked)."""
from __future__ import annotations

import hashlib

from .. import _codec
from ..v1 import agent_server_pb2 as pb


class ClassNotSent(LookupError):
    """The server does not have that digest and the request carried no class."""


class HostedClasses:
    """Classes by digest of their pickle."""

    def __init__(self, classes: list[type], allow_shipped: bool = True) -> None:
        self.allow_shipped = allow_shipped
        self._by_digest: dict[str, type] = {}
        self.names: list[str] = []
        for cls in classes:
            self._by_digest[hashlib.sha256(_codec.dumps(cls)).hexdigest()] = cls
            self.names.append(f"{cls.__module__}:{cls.__qualname__}")

    def resolve(self, ref: pb.ClassRef) -> type:
        """The class ref names; ClassNotSent, LookupError or another error when it cannot be had here."""
        cls = self._by_digest.get(ref.digest)
        if cls is not None:
            return cls
        if not ref.blob:
            raise ClassNotSent("unknown class digest: send the class")
        if not self.allow_shipped:
            raise LookupError(f"class {ref.name} is not hosted here (hosted: {', '.join(self.names) or 'none'})")
        if hashlib.sha256(ref.blob).hexdigest() != ref.digest:
            raise ValueError(f"class {ref.name}: blob does not match its digest")
        cls = _codec.loads(ref.blob)
        if not isinstance(cls, type):
            raise TypeError(f"{ref.name} is not a class but {type(cls).__name__}")
        self._by_digest[ref.digest] = cls
        return cls
