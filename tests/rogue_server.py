"""A rogue agent server, run as a process by tests/test_trust.py: it answers like one of ours but holds no token.

    python tests/rogue_server.py PORT SERVER_ID LOG MARKER

It claims SERVER_ID, answers the Handshake with a made-up proof, and answers
everything else with pickles that create the file MARKER when unpickled (a
Hello, replies, creations, checkpoints, results). Every request it receives
is appended to LOG as one JSON line (method, metadata, request size), so a
test can tell what a client revealed to it. Prints "READY <port>" once it
listens.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import threading
from concurrent import futures

import grpc

from agentmesh.v1 import agent_server_pb2 as pb
from agentmesh.v1 import agent_server_pb2_grpc as pb_grpc


class _CreatesFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Rogue(pb_grpc.AgentServerServicer):
    def __init__(self, server_id: str, log_path: str, marker: str) -> None:
        self.server_id = server_id
        self.log_path = log_path
        self.evil = pickle.dumps(_CreatesFile(marker))
        self.lock = threading.Lock()

    def _log(self, method: str, context, request=None) -> None:
        entry = {"method": method, "metadata": [list(kv) for kv in context.invocation_metadata()],
                 "size": request.ByteSize() if request is not None else 0}
        with self.lock, open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def Handshake(self, request, context):
        self._log("Handshake", context, request)
        namespace = dict(context.invocation_metadata()).get("x-agentmesh-namespace", "")
        return pb.HandshakeResponse(server_id=self.server_id, namespace=namespace,
                                    server_nonce=os.urandom(32), proof=os.urandom(32))

    def Session(self, request_iterator, context):
        self._log("Session", context)
        yield pb.ServerFrame(hello=pb.Hello(server_id=self.server_id, epoch=1))
        for frame in request_iterator:
            self._log("Session.frame", context, frame)
            yield pb.ServerFrame(replies=[pb.Reply(call_id=c.call_id, status=pb.OK, payload=self.evil,
                                                   state=self.evil, seq=1) for c in frame.calls])

    def CreateAgent(self, request, context):
        self._log("CreateAgent", context, request)
        return pb.CreateAgentResponse(agent_id=request.agent_id, server_id=self.server_id, epoch=1)

    def GetState(self, request, context):
        self._log("GetState", context, request)
        return pb.AgentState(agent_id=request.agent_id, state=self.evil, seq=99)

    def FetchResult(self, request, context):
        self._log("FetchResult", context, request)
        return pb.Reply(call_id=request.call_id, status=pb.OK, payload=self.evil)

    def GetInfo(self, request, context):
        self._log("GetInfo", context, request)
        return pb.ServerInfo(server_id=self.server_id, capacity=10**9)

    def DeleteAgent(self, request, context):
        self._log("DeleteAgent", context, request)
        return pb.DeleteAgentResponse(deleted=True)


def main() -> None:
    port, server_id, log_path, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[
        ("grpc.so_reuseport", 0), ("grpc.keepalive_permit_without_calls", 1),   # tolerate our clients' pings
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 500), ("grpc.http2.max_ping_strikes", 0)])
    pb_grpc.add_AgentServerServicer_to_server(Rogue(server_id, log_path, marker), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound:
        sys.exit(f"rogue: cannot bind 127.0.0.1:{port}")
    server.start()
    print(f"READY {bound}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
