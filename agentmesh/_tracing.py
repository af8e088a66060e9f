"""OpenTelemetry traces of calls: a span per call on the caller and on the server, one trace across hops.

Optional (``pip install agentmesh[tracing]``, the OpenTelemetry API) and off
until turned on (``agentmesh.init(tracing=True)``, ``AGENTMESH_TRACING=1``).
The caller's span context travels in the call itself (``Call.trace``, W3C
trace context): calls share one session stream, so gRPC metadata cannot
carry one per call. A placeholder's fetch is a unary call of its own: its
context goes in gRPC metadata. A server traces a call only when the call
carries a context and its own process traces; the agent's method then runs inside
the server span, so calls it makes to other agents are its children. Spans
follow OpenTelemetry's GenAI agent conventions where they fit
(``invoke_agent``, ``gen_ai.agent.name``, ``gen_ai.agent.id``).
When off, a call pays one ``None`` check on each side.
"""
from __future__ import annotations

from typing import Any, Awaitable, Iterable, MutableMapping

from ._version import __version__

#: the reply status of a successful call (the proto's ReplyStatus.OK)
_OK = 0


class Tracing:
    """This process's tracer and propagator."""

    def __init__(self) -> None:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:
            raise ImportError("agentmesh: tracing needs the OpenTelemetry API: pip install 'agentmesh[tracing]' "
                              "(opentelemetry-api), and an SDK to export the spans") from None
        self._context, self._propagate, self._trace = context, propagate, trace
        self.tracer = trace.get_tracer("agentmesh", __version__)

    def _attributes(self, cls: str, method: str, agent_id: str, name: str) -> dict[str, str]:
        return {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name or cls,
                "gen_ai.agent.id": agent_id, "agentmesh.class": cls, "agentmesh.method": method,
                "rpc.system": "grpc", "rpc.service": "agentmesh.v1.AgentServer"}

    def start_call(self, cls: str, method: str, agent_id: str, name: str, carrier: MutableMapping[str, str]) -> Any:
        """The caller's span of a call (a child of the current span), its context written into carrier."""
        span = self.tracer.start_span(f"invoke_agent {name or cls}", kind=self._trace.SpanKind.CLIENT,
                                      attributes=self._attributes(cls, method, agent_id, name))
        self._propagate.inject(carrier, context=self._trace.set_span_in_context(span))
        return span

    def start_serving(self, carrier: MutableMapping[str, str], cls: str, method: str, agent_id: str,
                      name: str) -> tuple[Any, Any]:
        """The server's span of a call, as the child of the caller's, made current on this thread."""
        parent = self._propagate.extract(dict(carrier))
        span = self.tracer.start_span(f"invoke_agent {name or cls}", context=parent,
                                      kind=self._trace.SpanKind.SERVER,
                                      attributes=self._attributes(cls, method, agent_id, name))
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def stop_serving(self, span: Any, token: Any, reply: Any) -> None:
        self._context.detach(token)
        end_span(span, reply)

    def start_fetch(self, agent_id: str, call_id: str, parent: MutableMapping[str, str] | None = None
                    ) -> tuple[Any, dict[str, str]]:
        """The span of a placeholder's fetch (a child of parent's context, else of the current span),
        and the context to send with it."""
        context = self._propagate.extract(dict(parent)) if parent else None
        span = self.tracer.start_span("fetch_result", context=context, kind=self._trace.SpanKind.CLIENT,
                                      attributes=self._fetch_attributes(agent_id, call_id))
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier, context=self._trace.set_span_in_context(span))
        return span, carrier

    async def serve_fetch(self, metadata: Iterable[tuple[str, str]], agent_id: str, call_id: str,
                          fetching: Awaitable[Any]) -> Any:
        """Await a fetch's reply on the server inside a span, the child of the fetcher's (its context came in
        gRPC metadata)."""
        parent = self._propagate.extract({key: value for key, value in metadata})
        if not self._trace.get_current_span(parent).get_span_context().is_valid:   # the fetcher does not trace
            return await fetching
        span = self.tracer.start_span("fetch_result", context=parent, kind=self._trace.SpanKind.SERVER,
                                      attributes=self._fetch_attributes(agent_id, call_id))
        reply = None
        try:
            reply = await fetching
            return reply
        finally:
            end_span(span, reply)

    @staticmethod
    def _fetch_attributes(agent_id: str, call_id: str) -> dict[str, str]:
        return {"gen_ai.agent.id": agent_id, "agentmesh.call_id": call_id, "rpc.system": "grpc",
                "rpc.service": "agentmesh.v1.AgentServer", "rpc.method": "FetchResult"}


def end_span(span: Any, reply: Any) -> None:
    """End a call's span with its reply's outcome (None: it raised)."""
    if reply is None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, "no reply"))
    elif reply.status != _OK:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("agentmesh.status", int(reply.status))
        if reply.error_type:
            span.set_attribute("error.type", reply.error_type)
        span.set_status(Status(StatusCode.ERROR, reply.error_message[:200]))
    span.end()
