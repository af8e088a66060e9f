"""The entry of a server process started by this package: ``python -m agentmesh.server``, or a fork (_process)."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from typing import Any

from .._config import ENV_LOG_LEVEL, ServerConfig, env
from .._process import ERROR_PREFIX, READY_PREFIX, read_config
from .._runtime import set_default_runtime
from .launcher import serve_forever


def child_main() -> None:
    """Entry of a fresh server process: read config from stdin, serve, exit when told or orphaned."""
    stdin = sys.stdin.buffer
    config, ready_fd = read_config(stdin)
    _serve(config, ready_fd, stdin)


def forked_main(config: ServerConfig, ready_fd: int, lifeline_fd: int) -> None:
    """Entry of a server process forked from its parent (see _process): a runtime of its own, then serve."""
    asyncio.events._set_running_loop(None)   # a loop the parent ran in this thread is not ours
    gc.freeze()   # the parent's objects: never walked by this process's collector, so their pages stay shared
    _name_process(PROCESS_NAME)
    set_default_runtime(None)   # the parent's runtime is a copy of another process's: a fresh one serves
    _serve(config, ready_fd, os.fdopen(lifeline_fd, "rb"))


#: what ps and /proc/PID/comm show for a forked server (its command line is its parent's)
PROCESS_NAME = b"agentmesh-srv"


def _name_process(name: bytes) -> None:
    """Set this process's name (Linux prctl PR_SET_NAME, 15 bytes at most); nothing elsewhere."""
    try:
        import ctypes   # here: only a fork pays for it
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _serve(config: ServerConfig, ready_fd: int, lifeline: Any) -> None:
    """Serve until told to stop or orphaned (the lifeline reaches EOF), then exit with the server's code."""
    ready = os.fdopen(ready_fd, "w")

    def announce(port: int, server_id: str, metrics_port: int = 0) -> None:
        try:
            ready.write(f"{READY_PREFIX} {port} {server_id} {metrics_port}\n")
            ready.close()
        except BrokenPipeError:   # the parent exited while this server started: nobody to serve
            os._exit(0)

    def watch_lifeline(stop: Any) -> None:
        lifeline.read()  # returns at EOF: the parent closed the pipe or died; nobody is left to drain for
        stop("the parent process exited", grace=0.5)

    logging.basicConfig(level=env(ENV_LOG_LEVEL, "WARNING"),
                        format="%(asctime)s agentmesh-server[%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        code = serve_forever(config, on_ready=announce, lifeline=watch_lifeline)
    except Exception as exc:  # noqa: BLE001 - tell the parent why, in one line
        if not ready.closed:
            ready.write(f"{ERROR_PREFIX} {type(exc).__name__}: {' '.join(str(exc).split())}\n")
            ready.close()
        raise
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown: gRPC's can take seconds
