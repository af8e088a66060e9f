"""The entry of a server process started by this package (``python -m agentmesh.server``)."""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

from .._config import ENV_LOG_LEVEL, env
from .._process import ERROR_PREFIX, READY_PREFIX, read_config
from .launcher import serve_forever


def child_main() -> None:
    """Entry of a server process: read config from stdin, serve, exit when told or orphaned."""
    stdin = sys.stdin.buffer
    config, ready_fd = read_config(stdin)
    ready = os.fdopen(ready_fd, "w")

    def announce(port: int, server_id: str, metrics_port: int = 0) -> None:
        try:
            ready.write(f"{READY_PREFIX} {port} {server_id} {metrics_port}\n")
            ready.close()
        except BrokenPipeError:   # the parent exited while this server started: nobody to serve
            os._exit(0)

    def watch_lifeline(stop: Any) -> None:
        stdin.read()  # returns at EOF: the parent closed the pipe or died; nobody is left to drain for
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

