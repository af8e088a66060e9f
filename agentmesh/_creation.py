"""Creating an agent on a chosen server over the unary RPC: the class by reference, else by value."""
from __future__ import annotations

import dataclasses
from typing import Any

import grpc

from . import _status, errors
from ._classes import py_modules_hint
from ._client.connection import Connection
from ._runtime import Runtime
from .v1 import agent_server_pb2 as pb


@dataclasses.dataclass
class AgentSpec:
    """What to create: the class, its constructor arguments, options, and a checkpoint to start from."""

    cls: type
    agent_id: str
    init_blob: bytes
    options: dict[str, Any]
    state: bytes = b""
    state_seq: int = 0
    answered: list[pb.Reply] = dataclasses.field(default_factory=list)   # replies the state already holds

    @property
    def timeout(self) -> float | None:
        return self.options.get("max_timeout_seconds")

    @property
    def checkpoint(self) -> bool:
        return self.options.get("checkpoint", True)


async def create_on(runtime: Runtime, conn: Connection, spec: AgentSpec) -> pb.CreateAgentResponse:
    """Create spec's agent on the server behind conn (I/O loop).

    The class goes by reference when the server can import it, else by value;
    either way its bytes are sent once per server. The server says which by
    the status of its refusal (CLASS_NOT_SENT, CLASS_NOT_FOUND), never by text.
    """
    classes = runtime.classes
    by_value = classes.by_value(spec.cls)
    for _ in range(4):
        ref = classes.ref(spec.cls, conn.server_id, by_value)
        request = pb.CreateAgentRequest(agent_id=spec.agent_id, cls=ref, init_args=spec.init_blob,
                                        checkpoint=spec.checkpoint, state=spec.state, state_seq=spec.state_seq,
                                        answered=spec.answered)
        check_size(request, conn)
        try:
            response = await conn.stub.CreateAgent(request, metadata=conn.metadata, timeout=spec.timeout)
        except grpc.aio.AioRpcError as exc:
            status = _status.status_of(exc)
            if status == pb.CLASS_NOT_SENT:
                classes.forget(conn.server_id, ref.digest)
                continue
            if status == pb.CLASS_NOT_FOUND and not by_value:
                by_value = True
                continue
            error = _status.rpc_error(exc, conn.address, "agent creation")
            if status == pb.CLASS_NOT_FOUND:
                error = type(error)(f"{error}{py_modules_hint(str(error))}")
            raise error from None
        classes.mark_shipped(conn.server_id, ref.digest)
        return response
    raise errors.AgentCreationError(f"agent server {conn.address} keeps losing class {ref.name}")


def check_size(request: pb.CreateAgentRequest, conn: Connection) -> None:
    """MessageTooLargeError naming the size, the limit and what makes it up, when a creation would not fit.

    Checked here, before sending: gRPC would end the whole session over it, and
    the caller would take the server for lost and send it again, forever.
    """
    size, limit = request.ByteSize(), conn.max_message_size
    if size <= limit:
        return
    parts = ((what, len(blob)) for what, blob in (("class by value", request.cls.blob),
                                                   ("constructor arguments", request.init_args),
                                                   ("checkpoint", request.state)))
    detail = ", ".join(f"{what} {length} bytes" for what, length in parts if length)
    raise errors.MessageTooLargeError(
        f"agent {request.agent_id} ({request.cls.name}) cannot be created on agent server {conn.address}: "
        f"its creation is {size} bytes ({detail}), over the limit of {limit} bytes (max_message_size)",
        agent_id=request.agent_id, method="__create__")
