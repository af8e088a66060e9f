"""gRPC core settings agentmesh's call path runs faster with; applied before grpc is imported.

gRPC reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is first imported. Its
EventEngine endpoints move every socket read and write to a pool of
EventEngine threads, so a call costs about three more thread wake-ups per
process than with the classic polling engine, where the thread polling the
completion queue does the I/O itself. On the synchronous call path, which is
bound by those wake-ups, the classic engine is about 10 % faster (see
benchmarks/bench_syncpath.py).

Nothing is changed when grpc is already imported, when the process sets
GRPC_EXPERIMENTS itself, when AGENTMESH_GRPC_EVENT_ENGINE=1, or for a grpcio
release this was not measured with. The variable is only set while grpc is
imported, so child processes do not inherit it (agentmesh's own child
servers apply it again on import).

gRPC's C core also logs at INFO through absl unless told otherwise: lines
such as ``I1207 ... ssl_transport_security.cc:2563] Handshake failed`` or
``chttp2_transport.cc:1403] ... Got goaway`` reach stderr of every client and
server, although agentmesh reports what they mean in its own errors. So grpc
is imported with ``GRPC_VERBOSITY=ERROR`` (read once, on import, in grpcio
1.85) unless the process set ``GRPC_VERBOSITY`` or ``GRPC_TRACE`` itself,
which asks for gRPC's own logging; it, too, is set only while grpc is imported.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys

#: grpcio (major, minor) releases whose experiment names below are known and tested
_TESTED = {(1, 85), (1, 86), (1, 87)}
_EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"

#: A channel option of every agentmesh channel (to agent servers and to etcd): each dials with subchannels of
#: its own. gRPC otherwise shares them across the process by address and options: a channel left dialling an
#: address in reconnect backoff (a dead server's, still being closed) made a new channel to a server now
#: listening there fail at once with the old "Connection refused", for up to the backoff (1-120 s); a server
#: restarted on its port, or a port the kernel hands out again, hit it.
OWN_SUBCHANNELS = ("grpc.use_local_subchannel_pool", 1)


def _grpcio_version() -> tuple[int, int] | None:
    """grpcio's version, read from its metadata file without importing grpc."""
    try:
        spec = importlib.util.find_spec("grpc")
        if spec is None or not spec.submodule_search_locations:
            return None
        with open(os.path.join(list(spec.submodule_search_locations)[0], "_grpcio_metadata.py")) as f:
            found = re.search(r"(\d+)\.(\d+)\.", f.read())
        return (int(found.group(1)), int(found.group(2))) if found else None
    except Exception:  # noqa: BLE001 - an unusual install: leave gRPC alone
        return None


def _import_settings() -> dict[str, str]:
    """The gRPC variables to set while grpc is imported (see the module docstring); {} when none."""
    settings = {}
    if "GRPC_VERBOSITY" not in os.environ and "GRPC_TRACE" not in os.environ:
        settings["GRPC_VERBOSITY"] = "ERROR"
    if ("GRPC_EXPERIMENTS" not in os.environ
            and os.environ.get("AGENTMESH_GRPC_EVENT_ENGINE", "") in ("", "0")
            and _grpcio_version() in _TESTED):
        settings["GRPC_EXPERIMENTS"] = _EXPERIMENTS
    return settings


def tune_grpc() -> bool:
    """Import grpc with the classic polling engine and its C core's INFO lines off; False when left as it was."""
    settings = {} if "grpc" in sys.modules else _import_settings()
    if not settings:
        return False
    os.environ.update(settings)
    try:
        import grpc  # noqa: F401 - reads GRPC_EXPERIMENTS and GRPC_VERBOSITY now
    finally:
        for name in settings:
            del os.environ[name]
    return True
