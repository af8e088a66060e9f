"""Prometheus metrics of one process (``agentmesh_*``), off until a metrics port is asked for.

A process has one set (on its Runtime): its agent servers count the calls
they answer, its proxies the calls they make, failovers and placements.
Live values (agents hosted, capacity, in-flight calls, sessions, lease
renewals) are read when Prometheus scrapes, from the sources that register
here. Labels are bounded: by class, method (only methods the class has),
status and reason, never by agent id. When metrics are off, nothing is
recorded: the call path checks for ``None``.
"""
from __future__ import annotations

import bisect
import collections
import logging
import socket
import socketserver
import threading
import time
from typing import Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

log = logging.getLogger("agentmesh")

#: a /metrics connection silent this long (s) is closed, so a half-open request holds its thread no longer
CONNECTION_TIMEOUT_S = 10.0
#: /metrics connections served at once, a thread each; beyond, a new one is closed at once
MAX_CONNECTIONS = 32

#: call durations (s): 100 µs (a no-op on loopback) to 5 min (a long LLM call)
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: what a free-text move reason is counted as (its first word, when it is one of these)
REASONS = ("lost", "fenced", "draining", "refused", "unproven", "hung")


def reason_label(reason: str) -> str:
    """A bounded label for a move's reason ("fenced (server ... epoch ...)" -> "fenced")."""
    text = reason.lower()
    for name in REASONS:
        if name in text:
            return name
    if any(word in text for word in ("closed", "ended", "unavailable", "expired", "write failed")):
        return "lost"
    return "other"


#: a source of live values: returns {metric name: (help, kind, [(labels dict, value)])}
Source = Callable[[], dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]]]


class _Live:
    """A collector that asks each registered source for its values at scrape time, summing equal series."""

    def __init__(self) -> None:
        self.sources: list[Source] = []
        self.lock = threading.Lock()

    def collect(self) -> Iterable[Any]:
        with self.lock:
            sources = list(self.sources)
        merged: dict[str, tuple[str, str, dict[tuple, float]]] = {}
        for source in sources:
            for name, (text, kind, samples) in source().items():
                _, _, series = merged.setdefault(name, (text, kind, {}))
                for labels, value in samples:
                    key = tuple(sorted(labels.items()))
                    series[key] = series.get(key, 0.0) + value
        for name, (text, kind, series) in merged.items():
            label_names = sorted({k for key in series for k, _ in key})
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, text, labels=label_names)
            for key, value in series.items():
                labels = dict(key)
                family.add_metric([labels.get(k, "") for k in label_names], value)
            yield family

    def describe(self) -> list:
        return []


class _Tally:
    """Calls by (class, method, status): count, and duration sum and buckets. One writer thread, no lock;
    a scrape reads a copy (a count may be one call behind its histogram, never torn further)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], list] = {}

    def add(self, key: tuple[str, str, str], seconds: float | None) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0, 0, 0.0, [0] * (len(DURATION_BUCKETS) + 1)]
        row[0] += 1
        if seconds is not None:
            row[1] += 1
            row[2] += seconds
            row[3][bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1

    def copy(self) -> list[tuple[tuple[str, str, str], int, int, float, list[int]]]:
        return [(key, row[0], row[1], row[2], list(row[3])) for key, row in list(self.rows.items())]


class _Calls:
    """The collector of the call tallies: calls_total, client_calls_total, call_duration_seconds, bytes."""

    def __init__(self, metrics: "Metrics") -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        m = self.metrics
        labels = ["class", "method", "status"]
        server = CounterMetricFamily("agentmesh_calls", "Calls answered by this process's agent servers, by reply "
                                     "status", labels=labels)
        client = CounterMetricFamily("agentmesh_client_calls", "Calls made by this process's proxies, by reply "
                                     "status", labels=labels)
        duration = HistogramMetricFamily("agentmesh_call_duration_seconds", "Call duration: on the server from "
                                         "arrival to reply (side=server), on the caller from sending to the reply "
                                         "(side=client)", labels=["class", "method", "side"])
        timed: dict[tuple[str, str, str], list] = {}
        for family, tally, side in ((server, m._server_calls, "server"), (client, m._client_calls, "client")):
            for (cls, method, status), count, n, total, buckets in tally.copy():
                family.add_metric([cls, method, status], count)
                if n:
                    row = timed.setdefault((cls, method, side), [0.0, [0] * len(buckets)])
                    row[0] += total
                    row[1] = [a + b for a, b in zip(row[1], buckets)]
        for (cls, method, side), (total, buckets) in timed.items():
            cumulative, running = [], 0
            for bound, n in zip((*DURATION_BUCKETS, float("inf")), buckets):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            duration.add_metric([cls, method, side], cumulative, total)
        yield server
        yield client
        yield duration
        for name, text, value in (
                ("agentmesh_received_bytes", "Payload bytes of the calls this process's servers received",
                 m.received_bytes),
                ("agentmesh_sent_bytes", "Payload and checkpoint bytes of the replies this process's servers sent",
                 m.sent_bytes),
                ("agentmesh_checkpoint_bytes", "Bytes of agent checkpoints sent with replies", m.checkpointed_bytes),
                ("agentmesh_agents_restored", "Agents re-created on this process's servers from a checkpoint: "
                 "moved in by a failover or a drain", m.restored)):
            yield CounterMetricFamily(name, text, value=value)

    def describe(self) -> list:
        return []


class Metrics:
    """The metrics of one process and the HTTP endpoints that serve them."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        #: per-call tallies, written only on the I/O loop thread (no lock): (cls, method, status) -> counts
        self._server_calls = _Tally()
        self._client_calls = _Tally()
        self.received_bytes = 0
        self.sent_bytes = 0
        self.checkpointed_bytes = 0
        self.restored = 0   # agents re-created on this process's servers from a checkpoint (moved in)
        self.moves = Counter("agentmesh_agent_moves", "Agents moved to another server by this process's proxies, "
                             "by reason", ["reason"], registry=r)
        self.failovers = Counter("agentmesh_failovers", "Lost or draining servers whose agents this process moved "
                                 "(one per loss), by reason", ["reason"], registry=r)
        self.placements = Counter("agentmesh_placements", "New agents placed by to_dist(), by where they went",
                                  ["result"], registry=r)
        self._live = _Live()
        r.register(self._live)
        r.register(_Calls(self))
        self._servers: list[Any] = []
        self.ports: list[int] = []
        self._children: dict[tuple, Any] = {}

    # -- recording (the hot paths call these only when metrics are on) --------------------
    def child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), cached: labels() costs more than the increment."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def answered(self, cls: str, method: str, status: str, seconds: float | None) -> None:
        """A server answered a call (I/O loop thread)."""
        self._server_calls.add((cls, method, status), seconds)

    def returned(self, cls: str, method: str, status: str, seconds: float | None) -> None:
        """A proxy's call got its reply (I/O loop thread)."""
        self._client_calls.add((cls, method, status), seconds)

    def payload(self, received: int, sent: int, checkpoint: int) -> None:
        """Bytes of a call a server received and of its reply (I/O loop thread)."""
        self.received_bytes += received
        self.sent_bytes += sent
        self.checkpointed_bytes += checkpoint

    # -- live values -------------------------------------------------------------------------
    def add_source(self, source: Source) -> None:
        with self._live.lock:
            self._live.sources.append(source)

    def remove_source(self, source: Source) -> None:
        with self._live.lock:
            if source in self._live.sources:
                self._live.sources.remove(source)

    # -- serving -------------------------------------------------------------------------------
    def serve(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP on host:port (0: a free port) in a daemon thread; the port.

        Connections are bounded: MAX_CONNECTIONS at once, each closed after
        CONNECTION_TIMEOUT_S of silence (both read now).
        """
        httpd = _MetricsServer((host, port), CONNECTION_TIMEOUT_S, MAX_CONNECTIONS)
        httpd.set_app(make_wsgi_app(self.registry))
        threading.Thread(target=httpd.serve_forever, name="agentmesh-metrics", daemon=True).start()
        self._servers.append(httpd)
        bound = httpd.server_port
        self.ports.append(bound)
        return bound

    def close(self) -> None:
        """Stop serving."""
        servers, self._servers = self._servers, []
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()
        self.ports = []


class _QuietHandler(WSGIRequestHandler):
    """A /metrics request handler that writes no line per request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the name BaseHTTPRequestHandler uses
        pass


class _MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """The /metrics HTTP server: a thread per connection, at most max_connections of them, each connection's
    socket timing out after timeout seconds without progress (a half-open request is dropped)."""

    daemon_threads = True
    request_queue_size = 128     # socketserver's 5 drops the SYNs of a burst: each waits 1 s to retry

    def __init__(self, address: tuple[str, int], timeout: float, max_connections: int) -> None:
        self.address_family = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM,
                                                 flags=socket.AI_PASSIVE)[0][0]
        self.connection_timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.debug("agentmesh metrics: %s turned away, all connections are busy", client_address)
            self.shutdown_request(request)
            return
        request.settimeout(self.connection_timeout)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("agentmesh metrics: the connection from %s ended in an error", client_address, exc_info=True)


def by_class(hosts: Iterable[Any]) -> list[tuple[dict[str, str], float]]:
    """(labels, count) of hosted agents per class."""
    counts = collections.Counter(getattr(h, "cls_name", "") for h in hosts)
    return [({"class": cls}, float(n)) for cls, n in counts.items()]


def now() -> float:
    """The clock durations are measured with."""
    return time.perf_counter()
