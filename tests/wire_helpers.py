"""Helpers shared by test_wire.py and test_errors.py: raw gRPC requests and metadata.

A "file-writing pickle" (unpickling it creates a file) proves whether a payload
was unpickled. The ``raw`` fixture opens raw channels and sessions to a server
and closes them at the end; test modules import it by name.
"""
from __future__ import annotations

import hashlib
import pickle
import uuid

import grpc
import pytest

from agentmesh.testing import wire as _wire
from agentmesh._tokens import local_token
from agentmesh.v1 import agent_server_pb2 as pb
from agentmesh.v1 import agent_server_pb2_grpc as pb_grpc
from raw_session import RawSession


class _CreatesFile:
    """Unpickling one of these runs open(path, "w"): the file's existence proves unpickling."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def file_writing_pickle(path) -> bytes:
    return pickle.dumps(_CreatesFile(str(path)), protocol=5)


def ticket_made_with(channel: grpc.Channel, token: str, namespace: str = "default") -> str:
    """A ticket from a real handshake with the server, made with token (which may be the wrong one)."""
    answer, challenge = _wire.handshake(channel, namespace, timeout=10)
    return _wire.ticket_for(token, namespace, answer, challenge)


def local_md(port: int, **overrides: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata with a fresh ticket for the server at 127.0.0.1:port, made with this user's local token
    (the token of a server given none), with some keys replaced as metadata() does."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return metadata(ticket_made_with(channel, local_token()), **overrides)


def metadata(ticket: str | None = None, **overrides: str | None) -> tuple[tuple[str, str], ...]:
    """call_metadata(ticket) with some keys replaced (None removes a key)."""
    md = dict(_wire.call_metadata(ticket))
    for key, value in overrides.items():
        if value is None:
            md.pop(key, None)
        else:
            md[key] = value
    return tuple(md.items())


def class_ref(cls: type) -> pb.ClassRef:
    blob = _wire.dumps(cls)
    return pb.ClassRef(name=f"{cls.__module__}:{cls.__qualname__}",
                       digest=hashlib.sha256(blob).hexdigest(), blob=blob)


def evil_create_request(path) -> pb.CreateAgentRequest:
    """A CreateAgent whose class blob (digest matching) and init args both write a file when unpickled."""
    blob = file_writing_pickle(path)
    return pb.CreateAgentRequest(
        agent_id=uuid.uuid4().hex,
        cls=pb.ClassRef(name="evil:Evil", digest=hashlib.sha256(blob).hexdigest(), blob=blob),
        init_args=blob)


def call(agent_id: str, method: str, payload: bytes = b"") -> pb.Call:
    return pb.Call(call_id=uuid.uuid4().hex, agent_id=agent_id, method=method, payload=payload)


def args_payload(*args, **kwargs) -> bytes:
    return _wire.dumps((args, kwargs))


@pytest.fixture
def raw():
    """raw(port) -> (channel, stub); channels and sessions are closed at the end."""
    opened: list[grpc.Channel] = []
    sessions: list[RawSession] = []

    def open_channel(port: int):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        opened.append(channel)
        stub = pb_grpc.AgentServerStub(channel)
        stub.port = port    # what local_md(stub.port) authenticates to
        return channel, stub

    def session(port: int, md) -> RawSession:
        channel, _ = open_channel(port)
        s = RawSession(channel, md)
        sessions.append(s)
        return s

    open_channel.session = session
    yield open_channel
    for s in sessions:
        s.close()
    for channel in opened:
        channel.close()


def proxy(cls, name: str, launcher, *args):
    """A proxy whose agent is built: raw sessions' calls to it must not overtake its pipelined creation."""
    made = cls(name, *args).to_dist(host="127.0.0.1", port=launcher.port)
    made._check_created()
    return made

