"""The agent server's gRPC method handlers: the generated ones, but Session's frames are written by hand."""
from __future__ import annotations

from typing import Any

import grpc

from .. import _protocol
from ..v1 import agent_server_pb2 as pb
from ..v1 import agent_server_pb2_grpc as pb_grpc


class _Handlers:
    """Stands in for a server to take the method handlers the generated code would add to it."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = dict(handlers)


def add_service(servicer: Any, server: grpc.aio.Server) -> None:
    """Serve the generated service, except that Session's frames are written by hand (_frames.server_frame),
    so its replies go to gRPC as bytes."""
    taken = _Handlers()
    pb_grpc.add_AgentServerServicer_to_server(servicer, taken)
    handlers = taken.handlers
    handlers["Session"] = grpc.stream_stream_rpc_method_handler(
        servicer.Session, request_deserializer=pb.ClientFrame.FromString, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_protocol.SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(_protocol.SERVICE_NAME, handlers)
