"""OpenTelemetry traces (issue 13): one trace spans a caller, an agent on server A and the agent on server B it calls."""
from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentmesh import Msg, RpcAgentServerLauncher, errors
from conftest import wait_until
from sample_agents import Asker, Echo, Forwarder

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def exporter():
    """The SDK, once per process (OpenTelemetry allows one global provider), exporting to memory."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    return _EXPORTER


@pytest.fixture
def two_servers():
    """Servers A and B in this process (so their spans reach the same exporter), over real gRPC."""
    started = []
    for _ in range(2):
        launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=8,
                                          custom_agent_classes=[Echo, Asker, Forwarder])
        launcher.launch(in_subprocess=False)
        started.append(launcher)
    yield started
    for launcher in started:
        launcher.shutdown()


@pytest.fixture
def traced(exporter, runtime):
    """This process traces for the test, its exporter emptied first; off again afterwards."""
    runtime.enable_tracing()
    exporter.clear()
    yield exporter
    runtime.enable_tracing(False)


def test_one_trace_spans_the_caller_an_agent_on_a_and_the_agent_on_b_it_calls(traced, two_servers):
    a, b = two_servers
    asker = Asker("asker").to_dist(host="127.0.0.1", port=a.port)
    echo = Echo("echo").to_dist(host="127.0.0.1", port=b.port)
    with trace.get_tracer("test").start_as_current_span("request") as root:
        assert asker.ask(echo, "hi") == "hi"
    with pytest.raises(errors.AgentCallError):
        echo.boom("no")
    spans = wait_until(lambda: (lambda s: s if len(s) >= 6 else None)(traced.get_finished_spans()))
    by_trace = [s for s in spans if s.context.trace_id == root.get_span_context().trace_id]
    names = sorted((s.name, s.kind.name) for s in by_trace)
    assert names == sorted([("request", "INTERNAL"),
                            ("invoke_agent asker", "CLIENT"), ("invoke_agent asker", "SERVER"),
                            ("invoke_agent echo", "CLIENT"), ("invoke_agent echo", "SERVER")]), names
    by_id = {s.context.span_id: s for s in by_trace}

    def parent(span):
        return by_id[span.parent.span_id] if span.parent is not None else None

    def find(name, kind):
        return next(s for s in by_trace if s.name == name and s.kind.name == kind)

    # caller -> asker (client) -> asker on A (server) -> echo (client, inside asker's method) -> echo on B (server)
    assert parent(find("invoke_agent asker", "CLIENT")).name == "request"
    assert parent(find("invoke_agent asker", "SERVER")) is find("invoke_agent asker", "CLIENT")
    assert parent(find("invoke_agent echo", "CLIENT")) is find("invoke_agent asker", "SERVER")
    assert parent(find("invoke_agent echo", "SERVER")) is find("invoke_agent echo", "CLIENT")
    served = find("invoke_agent echo", "SERVER")
    assert served.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert served.attributes["gen_ai.agent.name"] == "echo"
    assert served.attributes["gen_ai.agent.id"] == echo.agent_id
    assert served.attributes["agentmesh.method"] == "reply"
    failed = [s for s in spans if s.attributes.get("agentmesh.method") == "boom"]
    assert {s.kind.name for s in failed} == {"CLIENT", "SERVER"}
    assert all(s.status.status_code.name == "ERROR" for s in failed)


def test_placeholder_fetches_are_spans_in_the_trace_of_whoever_needs_the_value(traced, two_servers):
    a, b = two_servers
    on_a = Echo("on_a").to_dist(host="127.0.0.1", port=a.port)
    on_b = Echo("on_b").to_dist(host="127.0.0.1", port=b.port)
    forwarder = Forwarder("forwarder").to_dist(host="127.0.0.1", port=a.port)
    with trace.get_tracer("test").start_as_current_span("request") as root:
        pending = on_b.slow(0.3, "v")          # pending when on_a gets it: A fetches it from B
        assert on_a.ping(pending) == "v"
        assert forwarder.forward(on_b, 0.3, "w") == "w"   # it returns a pending placeholder: we fetch from B
    trace_id = root.get_span_context().trace_id
    spans = wait_until(lambda: (lambda s: s if len(s) == 4 else None)(
        [s for s in traced.get_finished_spans() if s.name == "fetch_result" and s.context.trace_id == trace_id]))
    by_id = {s.context.span_id: s for s in traced.get_finished_spans()}
    clients = [s for s in spans if s.kind.name == "CLIENT"]
    servers = [s for s in spans if s.kind.name == "SERVER"]
    assert len(clients) == 2 and len(servers) == 2
    for served in servers:   # each server-side fetch is the child of a client-side one, over gRPC metadata
        assert by_id[served.parent.span_id] in clients
        assert served.attributes["rpc.method"] == "FetchResult"
    parents = sorted((by_id[c.parent.span_id].name, by_id[c.parent.span_id].kind.name) for c in clients)
    # A's fetch belongs to the call that needed the value; ours to the request that read it
    assert parents == [("invoke_agent on_a", "CLIENT"), ("request", "INTERNAL")], parents
    assert {c.attributes["gen_ai.agent.id"] for c in clients} == {on_b.agent_id}


def test_nothing_is_traced_or_sent_while_tracing_is_off(exporter, two_servers, runtime):
    a, _ = two_servers
    echo = Echo("quiet").to_dist(host="127.0.0.1", port=a.port)
    exporter.clear()
    assert runtime.tracing is None
    result = echo.reply(Msg("u", "x"))
    assert result.content["got"] == "x"
    assert len(result._slot.call.trace) == 0 and result._slot.span is None   # no context sent, no span
    assert exporter.get_finished_spans() == ()
