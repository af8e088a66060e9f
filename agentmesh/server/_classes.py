"""The classes a server hosts: given at start, or shipped by clients (by digest, checked)."""
from __future__ import annotations

import collections
import hashlib
import importlib.util
import logging
import os
import sys

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
        self._by_name: dict[str, list[type]] = collections.defaultdict(list)   # "module:Qual", "Qual" -> classes
        for cls in classes:
            self._given[hashlib.sha256(_codec.dumps(cls)).hexdigest()] = cls
            full = f"{cls.__module__}:{cls.__qualname__}"
            self.names.append(full)
            for key in {full, cls.__qualname__, cls.__name__}:
                self._by_name[key].append(cls)

    def __len__(self) -> int:
        """How many shipped classes are cached."""
        return len(self._shipped)

    def resolve(self, ref: pb.ClassRef) -> type:
        """The class ref names; ClassNotSent, LookupError or another error when it cannot be had here.

        A ref with neither digest nor blob names a hosted class by name ("module:Qual" or the class name
        alone), as AgentScope's RpcClient.create_agent does.
        """
        if not ref.digest and not ref.blob:
            return self.by_name(ref.name)
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

    def by_name(self, name: str) -> type:
        """The hosted class called name; LookupError when none or several are."""
        found = self._by_name.get(name, [])
        if len(found) == 1:
            return found[0]
        hosted = ", ".join(self.names) or "none"
        if not found:
            raise LookupError(f"class {name} is not hosted here (hosted: {hosted})")
        raise LookupError(f"class name {name} is ambiguous here: give it as module:QualName (hosted: {hosted})")

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


def classes_in_folder(folder: str) -> list[type]:
    """The classes defined in the .py files of folder (AgentScope's agent_dir), each file imported once by path.

    Files whose name starts with ``_`` are skipped. A file that fails to import
    (an exception, or SystemExit from a driver script parsing the server's argv)
    is a ValueError naming it and this rule, and the server does not start:
    friendlier than skipping it, which would leave a server up without classes
    its users expect, failing later and far from the cause.
    """
    path = os.path.realpath(folder)
    if not os.path.isdir(path):
        raise ValueError(f"agent_dir {folder!r} is not a folder")
    found: list[type] = []
    for entry in sorted(os.listdir(path)):
        if not entry.endswith(".py") or entry.startswith("_"):
            continue
        name = entry[:-3]
        module = sys.modules.get(name)
        if module is None or os.path.realpath(getattr(module, "__file__", "") or "") != os.path.join(path, entry):
            spec = importlib.util.spec_from_file_location(name, os.path.join(path, entry))
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module   # its classes pickle by reference, like any importable class
            try:
                spec.loader.exec_module(module)
            except (Exception, SystemExit) as exc:
                sys.modules.pop(name, None)
                what = (f"SystemExit({exc.code!r}): it runs as a script when imported" if isinstance(exc, SystemExit)
                        else f"{type(exc).__name__}: {exc}")
                raise ValueError(f"agent-dir file {os.path.join(path, entry)} failed to import: {what}. Every .py "
                                 f"file of an agent dir whose name does not start with '_' is imported; keep a "
                                 f"driver script out by naming it with a leading '_' (or moving it elsewhere), or "
                                 f"put its top-level code under `if __name__ == \"__main__\":`") from exc
        found.extend(obj for obj in vars(module).values()   # distributable classes (RpcMeta gives them to_dist)
                     if isinstance(obj, type) and obj.__module__ == name and callable(getattr(obj, "to_dist", None)))
    log.debug("agent_dir %s: %d class(es): %s", path, len(found), ", ".join(c.__qualname__ for c in found))
    return found
