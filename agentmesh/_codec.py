"""Pickling for the wire: cloudpickle where code must travel, the C pickler where it gives the same bytes."""
from __future__ import annotations

import io
import pickle
import sys
import threading
import types
from typing import Any, Callable

import cloudpickle

_SCALARS = frozenset((type(None), bool, int, float, str, bytes))

#: held while a module is registered with cloudpickle by value: that registry is cloudpickle's own
#: process-wide global, so this lock is one too (it holds no state of ours)
_by_value_lock = threading.Lock()

#: modules a user registered with cloudpickle.register_pickle_by_value (cloudpickle's own set; empty if renamed)
_BY_VALUE_MODULES = getattr(getattr(cloudpickle, "cloudpickle", None), "_PICKLE_BY_VALUE_MODULES", ())


def dumps(obj: Any) -> bytes:
    """Pickle with cloudpickle (classes from __main__ and lambdas by value)."""
    if type(obj) in _SCALARS:    # the same bytes, without cloudpickle's per-call set-up
        return pickle.dumps(obj, protocol=5)
    return cloudpickle.dumps(obj, protocol=5)


class _ByValue(Exception):
    """Raised by _PlainPickler for what cloudpickle must ship by value."""


class _Sink:
    """Where a pickler writes: its own chunks, and each large bytes object by reference (the pickler hands those to
    write() as they are instead of copying them into its buffer)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list = []

    def write(self, data: Any) -> None:
        self.parts.append(data)


class _PlainPickler(pickle.Pickler):
    """The C pickler, refusing what it would name but cloudpickle would ship by value (objects of __main__).

    reducer_override sees every class, function and instance pickled (not the atoms, strings, bytes and
    containers, which name nothing), so the check costs no pass over the pickle's bytes.
    """

    def reducer_override(self, obj: Any) -> Any:
        owner = obj if isinstance(obj, (type, types.FunctionType)) else type(obj)
        if getattr(owner, "__module__", None) == "__main__":
            raise _ByValue
        return NotImplemented


#: a _PlainPickler per thread, kept between calls (making one costs more than a small pickle)
_reusable = threading.local()


def _plain_parts(obj: Any) -> list:
    """obj pickled by this thread's _PlainPickler (a new one when a pickle in progress called us)."""
    pickler = getattr(_reusable, "pickler", None)
    if pickler is None:
        sink = _Sink()
        pickler = _PlainPickler(sink, protocol=5)
        pickler.sink = sink
    _reusable.pickler = None    # in use: a pickle made while this one runs gets a pickler of its own
    sink = pickler.sink
    sink.parts = parts = []
    pickler.dump(obj)           # raises: the pickler is dropped, its state after a failure is not trusted
    pickler.clear_memo()        # it held every object pickled
    sink.parts = []
    _reusable.pickler = pickler
    return parts


def _plain(obj: Any) -> list | None:
    """obj pickled as parts by the C pickler, or None where cloudpickle's output would differ.

    The standard pickler differs from cloudpickle only for what it refers to by name that cloudpickle would
    ship by value: objects of __main__ (and modules registered by value, while a class is being shipped).
    """
    if _by_value_lock.locked() or _BY_VALUE_MODULES:
        return None
    try:
        return _plain_parts(obj)
    except Exception:  # noqa: BLE001 - __main__, lambdas, local classes...: cloudpickle's job
        return None


def dumps_parts(obj: Any) -> tuple:
    """Pickle obj as a tuple of bytes objects to send one after another: large bytes in obj are parts of their own,
    not copied. The C pickler when its output is cloudpickle's (3x faster), else cloudpickle."""
    parts = _plain(obj)
    if parts is None:
        return (cloudpickle.dumps(obj, protocol=5),)
    return tuple(part if type(part) is bytes else bytes(part) for part in parts)   # a bytearray may change


def dumps_plain_first(obj: Any) -> bytes:
    """Like dumps, trying the C pickler first (3x faster) when its output is the same (see _plain)."""
    parts = _plain(obj)
    if parts is None:
        return cloudpickle.dumps(obj, protocol=5)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def dumps_by_value(obj: Any, module_name: str, *more: str) -> bytes:
    """Pickle obj with the code of its module (and of the modules named in more) included, for a server that
    cannot import them: their functions, classes and constants that obj's code uses travel in the pickle."""
    modules = [sys.modules[name] for name in dict.fromkeys((module_name, *more))
               if name in sys.modules and name not in ("__main__", "builtins") and name not in _BY_VALUE_MODULES]
    if not modules:
        return dumps(obj)
    with _by_value_lock:
        for module in modules:
            cloudpickle.register_pickle_by_value(module)
        try:
            return dumps(obj)
        finally:
            for module in modules:
                cloudpickle.unregister_pickle_by_value(module)


loads = cloudpickle.loads


class _Unpickler(pickle.Unpickler):
    """An unpickler that hands some globals over to callables of the caller's."""

    def __init__(self, data: bytes, replace: dict[tuple[str, str], Callable[..., Any]]) -> None:
        super().__init__(io.BytesIO(data))
        self._replace = replace

    def find_class(self, module: str, name: str) -> Any:
        found = self._replace.get((module, name))
        return found if found is not None else super().find_class(module, name)


def loads_replacing(data: bytes, replace: dict[tuple[str, str], Callable[..., Any]]) -> Any:
    """Unpickle, calling replace[(module, name)] wherever the pickle names that global."""
    return _Unpickler(data, replace).load()
