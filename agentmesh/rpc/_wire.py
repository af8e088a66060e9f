"""What both ends of the wire agree on: metadata keys, versions, pickling, class refs."""
from __future__ import annotations

import hashlib
import pickle
import sys
import threading
from typing import Any

import cloudpickle

from .. import errors
from ..v1 import agent_server_pb2 as pb

PROTOCOL_VERSION = "1"
PYTHON_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
CLOUDPICKLE_MAJOR = cloudpickle.__version__.split(".")[0]
SERVICE_NAME = "agentmesh.v1.AgentServer"

MD_PROTOCOL = "x-agentmesh-protocol"
MD_PYTHON = "x-agentmesh-python"
MD_PICKLE = "x-agentmesh-cloudpickle"
MD_TOKEN = "x-agentmesh-token"

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

#: Keepalive settings both ends use so a hung peer is noticed in about 2 s.
CLIENT_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.http2.ping_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
]


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every agentmesh RPC carries."""
    md = [(MD_PROTOCOL, PROTOCOL_VERSION), (MD_PYTHON, PYTHON_VERSION), (MD_PICKLE, CLOUDPICKLE_MAJOR)]
    if token:
        md.append((MD_TOKEN, token))
    return tuple(md)


_SCALARS = frozenset((type(None), bool, int, float, str, bytes))


def dumps(obj: Any) -> bytes:
    """Pickle with cloudpickle (classes from __main__ and lambdas by value)."""
    if type(obj) in _SCALARS:    # the same bytes, without cloudpickle's per-call set-up
        return pickle.dumps(obj, protocol=5)
    return cloudpickle.dumps(obj, protocol=5)


def dumps_plain_first(obj: Any) -> bytes:
    """Like dumps, trying the C pickler first (3x faster) when its output is the same.

    The standard pickler differs from cloudpickle only for what it refers to by
    name that cloudpickle would ship by value: objects of __main__ (and
    modules registered by value, while a class is being shipped). A pickle
    that names __main__ or that fails is made again with cloudpickle.
    """
    try:
        blob = pickle.dumps(obj, protocol=5)
    except Exception:  # noqa: BLE001 - lambdas, local classes...: cloudpickle's job
        return cloudpickle.dumps(obj, protocol=5)
    if b"__main__" in blob or _by_value_lock.locked():
        return cloudpickle.dumps(obj, protocol=5)
    return blob


loads = cloudpickle.loads

_REPLY_ERRORS: dict[int, type[errors.AgentMeshError]] = {
    pb.ERROR: errors.AgentCallError,
    pb.UNKNOWN_AGENT: errors.UnknownAgentError,
    pb.UNKNOWN_METHOD: errors.UnknownMethodError,
    pb.BAD_PAYLOAD: errors.PayloadError,
    pb.TOO_LARGE: errors.MessageTooLargeError,
    pb.STALE_EPOCH: errors.StaleEpochError,
    pb.OVERLOADED: errors.BackpressureError,
    pb.EXPIRED: errors.ResultExpiredError,
    pb.UNAVAILABLE: errors.AgentCallError,
    pb.CAPACITY: errors.CapacityError,
    pb.CLASS_NOT_FOUND: errors.ClassNotFoundError,
    pb.CREATION_FAILED: errors.AgentCreationError,
}


def reply_error(reply: pb.Reply, agent_id: str = "", method: str = "") -> errors.AgentMeshError:
    """The exception a failed reply stands for."""
    cls = _REPLY_ERRORS.get(reply.status, errors.AgentCallError)
    if not issubclass(cls, errors.AgentCallError):    # the agent was never created
        return cls(f"agent {agent_id} could not be created: {reply.error_message}")
    if reply.status == pb.ERROR:
        message = f"{reply.error_type}: {reply.error_message}" if reply.error_message else reply.error_type
        if method:
            message = f"{method}() on agent {agent_id} raised {message}"
    else:
        message = reply.error_message or pb.ReplyStatus.Name(reply.status)
    return cls(message, remote_type=reply.error_type, remote_traceback=reply.traceback,
               agent_id=agent_id, method=method)


def dumps_by_value(obj: Any, module_name: str) -> bytes:
    """Pickle obj with its module's code included, for a server that cannot import the module."""
    module = sys.modules.get(module_name)
    if module is None or module_name in ("__main__", "builtins"):
        return dumps(obj)
    with _by_value_lock:
        cloudpickle.register_pickle_by_value(module)
        try:
            return dumps(obj)
        finally:
            cloudpickle.unregister_pickle_by_value(module)


_by_value_lock = threading.Lock()


class ClassCache:
    """Client side: pickles a class once and remembers which servers have it."""

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
                blob = dumps_by_value(cls, cls.__module__) if by_value else dumps(cls)
                entry = (f"{cls.__module__}:{cls.__qualname__}", hashlib.sha256(blob).hexdigest(), blob)
                self._refs[(cls, by_value)] = entry
            name, digest, blob = entry
            if (server_key, digest) in self._shipped:
                return pb.ClassRef(name=name, digest=digest)
            return pb.ClassRef(name=name, digest=digest, blob=blob)

    def mark_shipped(self, server_key: str, digest: str) -> None:
        with self._lock:
            self._shipped.add((server_key, digest))

    def forget(self, server_key: str, digest: str) -> None:
        """The server lost the class (restarted): ship it by value next time."""
        with self._lock:
            self._shipped.discard((server_key, digest))


class_cache = ClassCache()
