"""The agentmesh benchmarks' shared set-up: server processes started and stopped, the host, the token.

Imported by workloads_agentmesh.py, workloads_async.py, workloads_observe.py,
bench_scale.py, bench_simulation.py and bench_busy.py; it imports none of them
(benchmark modules import one way: tests/test_bench_imports.py).
"""
from __future__ import annotations

import os
import secrets
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from agentmesh import RpcAgentServerLauncher  # noqa: E402

from bench_agents import Noop, WebAgent  # noqa: E402

HOST = "127.0.0.1"

#: the namespace token of workloads_agentmesh.py's registry workloads (registry records are signed with it)
TOKEN = "bench-" + secrets.token_urlsafe(32)


def launch(n: int = 1, classes: tuple = (Noop, WebAgent), into: list | None = None,
           **kwargs) -> list[RpcAgentServerLauncher]:
    """n server processes hosting classes; each is added to into (when given) as soon as it runs, so a
    failure part-way still leaves every started one to stop."""
    servers = into if into is not None else []
    for _ in range(n):
        s = RpcAgentServerLauncher(host=HOST, custom_agent_classes=list(classes), **kwargs)
        s.launch(in_subprocess=True)
        servers.append(s)
    return servers


def shutdown(servers) -> None:
    """Stop the servers at once. Not launcher.shutdown(): that drains, and a draining server's agents
    move to another server (here a child server), which is not what is measured and takes long with
    10,000 agents. The workload process exits right after (_common.main), before any proxy reacts."""
    for s in servers:
        try:
            os.kill(s.pid, signal.SIGKILL)
        except OSError:   # e.g. the one a workload killed
            pass
