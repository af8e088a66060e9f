"""A relay without the token, run as a process by tests/test_relay.py: it sits where a client dials and
forwards to a real agent server of the namespace.

    python tests/relay_server.py TARGET MODE LOG CLIENT_MARKER SERVER_MARKER [CERT KEY TARGET_CA]

TARGET is the real server's host:port. Every pre-session RPC (Handshake,
GetInfo, CreateAgent, ...) is forwarded to TARGET with the caller's metadata
and body; in MODE "rewrite" the Handshake's claimed address (metadata
x-agentmesh-address, if any) is rewritten to TARGET's, so the real server's
proof covers the address it really has. Whatever metadata it sees is replayed
at TARGET with a CreateAgent whose class blob creates SERVER_MARKER when
unpickled, and with a Session that asks for the same creation. The client's
own Session is answered by the relay: a Hello with the real server's id, then
replies whose pickles create CLIENT_MARKER when unpickled. Every request and
every replay's outcome is appended to LOG as a JSON line. Prints
"READY <port>" once it listens. With CERT, KEY and TARGET_CA it serves TLS
with its own certificate and dials TARGET over TLS, verifying it with
TARGET_CA (a relay that terminates TLS).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import threading
from concurrent import futures

import grpc

from agentmesh.v1 import agent_server_pb2 as pb
from rogue_server import _CreatesFile   # a pickle that creates a file when unpickled

SERVICE = "/agentmesh.v1.AgentServer/"
ADDRESS_KEY = "x-agentmesh-address"


class Relay(grpc.GenericRpcHandler):
    def __init__(self, target: str, mode: str, log_path: str, client_marker: str, server_marker: str,
                 target_ca: str | None = None) -> None:
        self.target, self.mode, self.log_path = target, mode, log_path
        if target_ca:
            with open(target_ca, "rb") as f:
                self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(f.read()))
        else:
            self.channel = grpc.insecure_channel(target)
        self.client_evil = pickle.dumps(_CreatesFile(client_marker))
        self.server_evil = pickle.dumps(_CreatesFile(server_marker))
        self.server_id = ""
        self.replayed: set[tuple] = set()
        self.lock = threading.Lock()

    def log(self, **entry) -> None:
        with self.lock, open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def service(self, details):
        method = details.method
        if method == SERVICE + "Session":
            return grpc.stream_stream_rpc_method_handler(self.session)
        if method.startswith(SERVICE) and method.endswith(("DownloadFile", "ReadStream")):
            return grpc.unary_stream_rpc_method_handler(lambda body, ctx: self.forward_stream(method, body, ctx))
        return grpc.unary_unary_rpc_method_handler(lambda body, ctx: self.forward(method, body, ctx))

    def _metadata(self, context, handshake: bool) -> list[tuple[str, str]]:
        md = [(k, v) for k, v in context.invocation_metadata() if not k.startswith((":", "grpc-", "user-agent"))]
        if handshake and self.mode == "rewrite":
            md = [(k, self.target if k == ADDRESS_KEY else v) for k, v in md]
        return md

    def forward(self, method: str, body: bytes, context):
        md = self._metadata(context, method.endswith("/Handshake"))
        self.log(method=method, metadata=md, size=len(body))
        self.replay(md)
        try:
            answer, call = self.channel.unary_unary(method).with_call(body, metadata=md, timeout=10)
        except grpc.RpcError as exc:
            self.log(method=method, forwarded=exc.code().name, details=exc.details())
            context.abort(exc.code(), exc.details() or "")
        if method.endswith("/Handshake"):
            try:
                self.server_id = pb.HandshakeResponse.FromString(answer).server_id
            except Exception:  # noqa: BLE001 - whatever it was, pass it on
                pass
        self.log(method=method, forwarded="OK")
        return answer

    def forward_stream(self, method: str, body: bytes, context):
        md = self._metadata(context, False)
        self.log(method=method, metadata=md, size=len(body))
        self.replay(md)
        try:
            yield from self.channel.unary_stream(method)(body, metadata=md, timeout=10)
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details() or "")

    def session(self, frames, context):
        md = self._metadata(context, False)
        self.log(method=SERVICE + "Session", metadata=md)
        self.replay(md)
        yield pb.ServerFrame(hello=pb.Hello(server_id=self.server_id, epoch=1)).SerializeToString()
        for raw in frames:
            frame = pb.ClientFrame.FromString(raw)
            self.log(method="Session.frame", calls=[c.method for c in frame.calls])
            yield pb.ServerFrame(replies=[
                pb.Reply(call_id=c.call_id, status=pb.OK, payload=self.client_evil, state=self.client_evil, seq=1)
                for c in frame.calls]).SerializeToString()

    def replay(self, md: list[tuple[str, str]]) -> None:
        """Use whatever the caller sent at the real server: a code-running creation, unary and in a session."""
        key = tuple(md)
        with self.lock:
            if key in self.replayed:
                return
            self.replayed.add(key)
        digest = hashlib.sha256(self.server_evil).hexdigest()
        request = pb.CreateAgentRequest(agent_id="relayed", cls=pb.ClassRef(name="evil:Evil", digest=digest,
                                                                          blob=self.server_evil))
        try:
            self.channel.unary_unary(SERVICE + "CreateAgent")(request.SerializeToString(), metadata=md, timeout=5)
            self.log(replay="CreateAgent", outcome="OK")
        except grpc.RpcError as exc:
            self.log(replay="CreateAgent", outcome=exc.code().name, details=exc.details())
        call = pb.Call(call_id="relayed-1", agent_id="relayed-2", method="__create__",
                       payload=request.SerializeToString())
        try:
            replies = self.channel.stream_stream(SERVICE + "Session")(
                iter([pb.ClientFrame(calls=[call]).SerializeToString()]), metadata=md, timeout=5)
            count = sum(1 for _ in replies)
            self.log(replay="Session", outcome="OK", frames=count)
        except grpc.RpcError as exc:
            self.log(replay="Session", outcome=exc.code().name, details=exc.details())


def main() -> None:
    target, mode, log_path, client_marker, server_marker = sys.argv[1:6]
    cert, key, target_ca = (sys.argv[6:9] + [None, None, None])[:3]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[
        ("grpc.so_reuseport", 0), ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 500), ("grpc.http2.max_ping_strikes", 0)])
    server.add_generic_rpc_handlers((Relay(target, mode, log_path, client_marker, server_marker, target_ca),))
    if cert:
        with open(cert, "rb") as c, open(key, "rb") as k:
            bound = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(k.read(), c.read())]))
    else:
        bound = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY {bound}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
