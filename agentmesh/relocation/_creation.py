"""Creating an agent on a chosen server over the unary RPC: the class by reference, else by value."""
from __future__ import annotations

import dataclasses
from typing import Any

from .. import errors
from .._checkpoint import Checkpoint
from .._class_cache import py_modules_hint
from .._client.slot import Transport
from .._runtime import Runtime
from ..v1 import agent_server_pb2 as pb


@dataclasses.dataclass
class AgentSpec:
    """What to create: the class, its constructor arguments, options, and a checkpoint to start from."""

    cls: type
    agent_id: str
    init_blob: bytes
    options: dict[str, Any]
    resume: Checkpoint = Checkpoint()   # the checkpoint to start from (empty: a fresh agent)

    @property
    def timeout(self) -> float | None:
        return self.options.get("max_timeout_seconds")

    @property
    def durable(self) -> bool:
        """Whether the agent has a row in the state store (to_dist(name=...) or lifetime="detached")."""
        return bool(self.options.get("durable"))

    @property
    def checkpoints_on(self) -> bool:
        """Whether the agent's checkpoint comes back with each reply (the user's checkpoint= option)."""
        return self.options.get("checkpoint", True)


def creation_request(spec: AgentSpec, ref: pb.ClassRef) -> pb.CreateAgentRequest:
    """The creation of spec's agent with its class as ref (by reference or by value): built here alone, for the
    unary RPC and for the creation pipelined on a session."""
    return pb.CreateAgentRequest(agent_id=spec.agent_id, cls=ref, init_args=spec.init_blob,
                                 checkpoints_on=spec.checkpoints_on, state=spec.resume.state, state_seq=spec.resume.seq,
                                 answered=spec.resume.answered, durable=spec.durable)


async def create_on(runtime: Runtime, conn: Transport, spec: AgentSpec) -> pb.CreateAgentResponse:
    """Create spec's agent on the server behind conn (I/O loop).

    The class goes by reference when the server can import it, else by value;
    either way its bytes are sent once per server. The server says which by
    the status of its refusal (CLASS_NOT_SENT, CLASS_NOT_FOUND), never by text.
    """
    classes = runtime.classes
    by_value = classes.by_value(spec.cls)
    for _ in range(4):
        ref = classes.ref(spec.cls, conn.server_id, by_value)
        request = creation_request(spec, ref)
        check_size(request, conn)
        try:
            response = await conn.unary("CreateAgent", request, timeout=spec.timeout, what="agent creation")
        except errors.AgentMeshError as error:
            if error.status == pb.CLASS_NOT_SENT:
                classes.forget(conn.server_id, ref.digest)
                continue
            if error.status == pb.CLASS_NOT_FOUND and not by_value:
                by_value = True
                continue
            if error.status == pb.CLASS_NOT_FOUND:
                raise type(error)(f"{error}{py_modules_hint(str(error))}") from None
            raise
        classes.mark_shipped(conn.server_id, ref.digest)
        return response
    raise errors.AgentCreationError(f"agent server {conn.address} keeps losing class {ref.name}")


def check_size(request: pb.CreateAgentRequest, conn: Transport) -> None:
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
