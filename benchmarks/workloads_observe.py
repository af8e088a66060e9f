"""agentmesh's observability workloads: what metrics and tracing cost on the synchronous call.

Run by benchmarks/run.py through workloads_agentmesh.py (same interpreter, same JSON shape).
"""
from __future__ import annotations

from agentmesh.testing import default_runtime

import _common as C
from bench_agents import Noop
from _servers import HOST, launch, shutdown

BLOCK = 100


def _interleaved(first, second, sz: dict) -> tuple[list, list]:
    C.time_loop(first, sz["sync_warmup"])
    C.time_loop(second, sz["sync_warmup"])
    a, b = [], []
    for _ in range(max(1, sz["ckpt_calls"] // BLOCK)):
        a += C.time_loop(first, BLOCK)[0]
        b += C.time_loop(second, BLOCK)[0]
    return a, b


def _result(lat_off: list, lat_on: list, note: str) -> dict:
    m_on, m_off = C.dist(lat_on, 1e6), C.dist(lat_off, 1e6)
    return {"metrics": {"on": m_on, "off": m_off,
                        "cost": round(100 * (m_on["median"] - m_off["median"]) / m_off["median"], 1)},
            "notes": [f"{len(lat_on)} calls each, in interleaved blocks of {BLOCK}; {note}"]}


def metrics(sz: dict) -> dict:
    """No-op round trip with metrics off vs on (server and client recording, endpoints served), interleaved."""
    runtime = default_runtime()
    off_server = launch(1)
    on_server = launch(1, metrics_port=0)
    try:
        runtime.serve_metrics(0, HOST)
        off = Noop("off").to_dist(host=HOST, port=off_server[0].port)
        on = Noop("on").to_dist(host=HOST, port=on_server[0].port)
        off.ping()
        off._binding.session().metrics = None   # this session records nothing: metrics off on both sides
        lat_off, lat_on = _interleaved(off.ping, on.ping, sz)
        return _result(lat_off, lat_on, "'on': the server serves /metrics and this process records its calls too")
    finally:
        runtime.stop_metrics()
        shutdown(off_server + on_server)


def _off_path_ns(runtime) -> float:
    """What a call pays for tracing while it is off: the checks it passes (the proxy's and the server's
    ``runtime.tracing is None``, the slot's ``span is not None``), timed as the code runs them."""
    import timeit

    class Slot:
        span = None

    slot, n = Slot(), 1_000_000
    checks = timeit.timeit("runtime.tracing is None; slot.span is not None; runtime.tracing is None",
                           globals={"runtime": runtime, "slot": slot}, number=n)
    empty = timeit.timeit("pass", number=n)
    return round(max(0.0, checks - empty) / n * 1e9, 1)


def tracing(sz: dict) -> dict:
    """No-op round trip with tracing off vs on (OpenTelemetry SDK recording both spans), interleaved."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    runtime = default_runtime()
    from agentmesh import RpcAgentServerLauncher
    server = RpcAgentServerLauncher(host=HOST, capacity=8, custom_agent_classes=[Noop])
    server.launch(in_subprocess=False)    # in this process, so its spans are recorded by the same SDK
    try:
        agent = Noop("traced").to_dist(host=HOST, port=server.port)

        def off() -> None:
            runtime.enable_tracing(False)
            agent.ping()

        def on() -> None:
            runtime.enable_tracing(True)
            agent.ping()
        lat_off, lat_on = _interleaved(off, on, sz)
        out = _result(lat_off, lat_on, "client and server in one process (so both spans are recorded), the "
                                       "SDK's batch processor exporting to nowhere")
        runtime.enable_tracing(False)
        out["metrics"]["off_ns"] = _off_path_ns(runtime)
        out["metrics"]["off_share"] = round(100 * out["metrics"]["off_ns"] / (1000 * out["metrics"]["off"]["median"]),
                                            4)
        return out
    finally:
        runtime.enable_tracing(False)
        server.shutdown()
        provider.shutdown()
