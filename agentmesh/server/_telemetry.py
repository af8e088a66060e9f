"""What a server reports about itself: its live values for a metrics scrape, its memory for GetInfo, its spans."""
from __future__ import annotations

import contextlib
import os
import resource
from typing import Any, Iterator

from .. import _metrics, _status
from ..v1 import agent_server_pb2 as pb


def live_metrics(server: Any) -> dict:
    """The server's live values for a scrape (read from the scraping thread: copies only)."""
    hosts = list(server.hosting.agents.values())
    queued = sum(len(h.ready or ()) + len(h.waiting or ()) for h in hosts)
    live = {
        "agentmesh_agents": ("Agents hosted, by class", "gauge", _metrics.by_class(hosts)),
        "agentmesh_capacity": ("Agents this server accepts", "gauge", [({}, float(server.config.capacity))]),
        "agentmesh_inflight_calls": ("Calls accepted and not yet answered", "gauge",
                                     [({}, float(server.hosting.inflight))]),
        "agentmesh_queued_calls": ("Calls waiting to start (in mailboxes, or for arguments or construction)",
                                   "gauge", [({}, float(queued))]),
        "agentmesh_sessions": ("Client sessions open on this server", "gauge", [({}, float(len(server.sessions)))]),
        "agentmesh_stored_results": ("Results kept for replays and placeholder fetches", "gauge",
                                     [({}, float(len(server.hosting.results)))]),
    }
    if server.registration is not None:
        live.update(server.registration.live_metrics())
    if server.hosting.durable is not None:
        live.update(server.hosting.durable.live_metrics())
    return live


def count_answer(metrics: Any, host: Any, work: Any, reply: pb.Reply, owned: pb.Reply | None) -> None:
    """Count a finished call in the metrics: its status, latency and payload sizes."""
    method = work.call.method if reply.status != pb.UNKNOWN_METHOD else "other"
    metrics.answered(host.cls_name, method, _status.name(reply.status),
                     _metrics.now() - work.received if work.received else None)
    sent = owned if owned is not None else reply
    metrics.payload(len(work.call.payload), len(sent.payload) + len(sent.state), len(sent.state))


def resident_mib() -> float:
    """This process's resident set size in MiB (Linux /proc; elsewhere the peak, from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def serving(tracing: Any, host: Any, work: Any) -> Iterator[list[pb.Reply]]:
    """A list for a call's reply, inside a server span when the caller traces and so does this process."""
    done: list[pb.Reply] = []
    if tracing is None or not work.call.trace:
        yield done
        return
    span, token = tracing.start_serving(work.call.trace, host.cls_name, work.call.method, host.agent_id, host.name)
    try:
        yield done
    finally:
        tracing.stop_serving(span, token, done[0] if done else pb.Reply())
