"""The wire contract, driven against real servers over real gRPC.

The tests speak raw gRPC (hand-built requests and metadata) so they check the
server itself, not what the agentmesh client happens to send: the version and
token gates on metadata (checked before anything is unpickled), Session frames
and replays, classes sent by value once per server, a client that goes away
mid-call, and serving on IPv6. Bad input
and error reporting are in test_errors.py; shared helpers in wire_helpers.py.
"""
from __future__ import annotations

import sys
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import agentmesh
from agentmesh import AgentBase, Msg
from agentmesh.testing import wire as _wire
from agentmesh.v1 import agent_server_pb2 as pb
from conftest import wait_until
from sample_agents import Echo, Fragile
from wire_helpers import (  # noqa: F401  (raw is a fixture)
    args_payload,
    call,
    class_ref,
    evil_create_request,
    file_writing_pickle,
    local_md,
    metadata,
    ticket_made_with,
    proxy,
    raw,
)

TOKEN = "wire-Bc5Nx9Zq2Wr7Tm4Yk8Uh1Jp6Lg3Fd0Es"


# -- version gate ----------------------------------------------------------------
_MINOR = sys.version_info[1]
_PICKLE_MAJOR = int(_wire.CLOUDPICKLE_MAJOR)
MISMATCHES = {
    "python": ({_wire.MD_PYTHON: f"3.{_MINOR + 1}"},
               ["Python version mismatch", f"3.{_MINOR + 1}", _wire.PYTHON_VERSION]),
    "protocol": ({_wire.MD_PROTOCOL: "99"},
                 ["protocol version mismatch", "99", _wire.PROTOCOL_VERSION]),
    "cloudpickle": ({_wire.MD_PICKLE: str(_PICKLE_MAJOR + 1)},
                    ["cloudpickle version mismatch", f"{_PICKLE_MAJOR + 1}.x", f"{_PICKLE_MAJOR}.x"]),
    "no-metadata": ({_wire.MD_PROTOCOL: None, _wire.MD_PYTHON: None, _wire.MD_PICKLE: None},
                    ["protocol version mismatch", "nothing"]),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_version_mismatch_is_refused_before_anything_is_unpickled(case, server, raw, tmp_path):
    overrides, expected = MISMATCHES[case]
    target = proxy(Echo, "target", server)       # a real agent, so a call to it would be unpickled
    channel, stub = raw(server.port)
    bad_md = metadata(ticket_made_with(channel, server.token), **overrides)   # authenticated, other versions

    created = tmp_path / "created-by-CreateAgent"
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateAgent(evil_create_request(created), metadata=bad_md, timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for text in expected:
        assert text in info.value.details()

    called = tmp_path / "created-by-Session"
    session = raw.session(server.port, bad_md)
    session.send(call(target.agent_id, "ping", file_writing_pickle(called)))
    error = session.wait_end()
    assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
    for text in expected:
        assert text in error.details()
    assert not any(f.HasField("hello") for f in session.frames)

    # The same calls with the right metadata do unpickle (the probe works) and the server goes on.
    assert target.ping(1) == 1
    assert not created.exists() and not called.exists()
    control = tmp_path / "control"
    with pytest.raises(grpc.RpcError):
        stub.CreateAgent(evil_create_request(control), metadata=metadata(ticket_made_with(channel, server.token)),
                         timeout=10)
    assert control.exists()
    assert target.get_count() == 0


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_an_unauthenticated_caller_is_told_unauthenticated_and_no_versions(case, server, raw, tmp_path):
    overrides, _ = MISMATCHES[case]
    _, stub = raw(server.port)
    for ticket in (None, "0" * 40, "not.a.ticket.at-all"):
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateAgent(evil_create_request(tmp_path / "ran"), metadata=metadata(ticket, **overrides),
                             timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()
        told = info.value.details()
        assert not any(version in told for version in (_wire.PYTHON_VERSION, _wire.PROTOCOL_VERSION + ",",
                                                       "cloudpickle", "Python", "protocol")), told
    assert not (tmp_path / "ran").exists()


# -- token gate ----------------------------------------------------------------------
def test_token_is_required_and_checked_before_unpickling(servers, raw, tmp_path):
    s = servers(capacity=8, token=TOKEN)
    channel, stub = raw(s.port)
    echo_id = uuid.uuid4().hex
    right = _wire.authenticate(channel, TOKEN)

    # The right token works, over raw gRPC: create an agent, call it on a Session.
    response = stub.CreateAgent(pb.CreateAgentRequest(agent_id=echo_id, cls=class_ref(Echo),
                                                      init_args=args_payload("guarded")),
                                metadata=right, timeout=10)
    assert response.name == "guarded" and not response.existed
    ok = raw.session(s.port, right)
    assert ok.hello().server_id == response.server_id
    first = call(echo_id, "reply", args_payload(Msg("u", "hi")))
    ok.send(first)
    reply = ok.reply(first.call_id)
    assert reply.status == pb.OK
    assert _wire.loads(reply.payload).content == {"count": 1, "got": "hi"}

    forged = ticket_made_with(channel, TOKEN).split(".")
    forged[1] = "00" * 32    # a server nonce the server never issued
    for label, md, words in (("missing", metadata(None), "missing token"),
                             ("wrong", metadata(ticket_made_with(channel, "not-" + TOKEN)), "wrong token"),
                             ("empty", metadata(None, **{_wire.MD_AUTH: ""}), "missing token"),
                             ("garbage", metadata("not a ticket"), "malformed"),
                             ("forged nonce", metadata(".".join(forged)), "not issued by this agent server"),
                             ("the token itself", metadata(TOKEN), "malformed")):
        created = tmp_path / f"create-{label}"
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateAgent(evil_create_request(created), metadata=md, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, label
        assert words in info.value.details(), (label, info.value.details())
        assert TOKEN not in info.value.details()

        with pytest.raises(grpc.RpcError) as info:
            stub.GetInfo(pb.InfoRequest(), metadata=md, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, label

        called = tmp_path / f"session-{label}"
        bad = raw.session(s.port, md)
        bad.send(call(echo_id, "reply", file_writing_pickle(called)))
        error = bad.wait_end()
        assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, label
        assert words in error.details()
        assert not bad.frames
        assert not created.exists() and not called.exists(), label

    # Nothing above reached the agent; the authenticated session still works.
    second = call(echo_id, "get_count")
    ok.send(second)
    assert _wire.loads(ok.reply(second.call_id).payload) == 1
    info = stub.GetInfo(pb.InfoRequest(), metadata=right, timeout=10)
    assert info.agents == 1

    # Health is open to anyone, for "" and for the service's own name.
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", _wire.SERVICE_NAME):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_client_api_reports_a_missing_or_wrong_token(servers, runtime):
    s = servers(capacity=8, token=TOKEN)
    runtime.configure(token=None)      # no token: this user's local token, which the server does not hold
    with pytest.raises(agentmesh.errors.AuthenticationError, match="did not prove it holds the token"):
        Echo("x").to_dist(host="127.0.0.1", port=s.port)
    runtime.configure(token="not-" + TOKEN)   # another token: we refuse the server, whose proof does not verify
    with pytest.raises(agentmesh.errors.AuthenticationError, match="did not prove it holds the token"):
        Echo("x").to_dist(host="127.0.0.1", port=s.port)
    runtime.configure(token=TOKEN, namespace="elsewhere")   # the right token, another namespace
    with pytest.raises(agentmesh.errors.AuthenticationError, match="serves another namespace than 'elsewhere'"):
        Echo("x").to_dist(host="127.0.0.1", port=s.port)
    runtime.configure(namespace="default")
    assert Echo("x").to_dist(host="127.0.0.1", port=s.port).ping(1) == 1


# -- frames and replays on a Session -------------------------------------------------
def test_replies_that_together_exceed_the_limit_are_each_delivered(servers, raw):
    limit = 1_000_000
    s = servers(capacity=8, max_message_size=limit)
    agent = proxy(Fragile, "F", s)
    session = raw.session(s.port, local_md(s.port))
    session.hello()
    size = int(limit * 0.9)
    calls = [call(agent.agent_id, "blob", args_payload(size)) for _ in range(3)]
    for c in calls:                       # one at a time: each reply fits in a frame of its own
        session.send(c)
        assert session.reply(c.call_id).status == pb.OK
    # Replays of finished calls (as after a reconnect) are answered at once, all together.
    replay = raw.session(s.port, local_md(s.port))
    replay.hello()
    replay.send(*[pb.Call(call_id=c.call_id, agent_id=c.agent_id, method=c.method) for c in calls])
    for c in calls:
        reply = replay.reply(c.call_id)
        assert reply.status == pb.OK and len(_wire.loads(reply.payload)) == size


# -- classes by value ----------------------------------------------------------------------
def _local_class():
    class Tally(AgentBase):           # defined in a function: cloudpickle ships it by value
        def __init__(self, name, step):
            super().__init__(name)
            self.total = 0
            self.step = step

        def add(self):
            self.total += self.step
            return self.total

    return Tally


def test_class_blob_is_sent_once_per_server(servers, raw, runtime):
    s1, s2 = servers(capacity=8), servers(capacity=8)
    Tally = _local_class()
    first = Tally("a", 2).to_dist(host="127.0.0.1", port=s1.port)
    server_id = first._binding.server_id
    classes = runtime.classes
    ref = classes.ref(Tally, server_id)
    assert ref.blob == b""
    assert ref.digest and "Tally" in ref.name
    assert classes.ref(Tally, "some-other-server").blob != b""
    second = Tally("b", 5).to_dist(host="127.0.0.1", port=s1.port)
    assert second._binding.server_id == server_id
    assert [first.add(), first.add(), second.add()] == [2, 4, 5]

    # The server keeps the class by digest: a create without the blob works there,
    # and is refused by a server that never saw the class (so the client would ship it).
    _, stub1 = raw(s1.port)
    response = stub1.CreateAgent(pb.CreateAgentRequest(agent_id=uuid.uuid4().hex, cls=ref,
                                                       init_args=args_payload("c", 7)),
                                 metadata=local_md(s1.port), timeout=10)
    assert response.name == "c"
    _, stub2 = raw(s2.port)
    with pytest.raises(grpc.RpcError) as info:
        stub2.CreateAgent(pb.CreateAgentRequest(agent_id=uuid.uuid4().hex, cls=ref,
                                                init_args=args_payload("d", 1)),
                          metadata=local_md(s2.port), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unknown class digest" in info.value.details()
    third = Tally("e", 3).to_dist(host="127.0.0.1", port=s2.port)
    assert third.add() == 3


# -- a client that goes away mid-call ------------------------------------------------------
def test_client_disconnect_during_a_call(server, raw):
    agent = proxy(Fragile, "F", server)
    _, stub = raw(server.port)
    session = raw.session(server.port, local_md(server.port))
    session.hello()
    slow = call(agent.agent_id, "slow_add", args_payload(1.0, 5))
    session.send(slow)
    wait_until(lambda: stub.GetInfo(pb.InfoRequest(), metadata=local_md(server.port), timeout=5).inflight >= 1,
               timeout=5)
    session.close()
    assert session.wait_end() is not None     # cancelled on our side
    assert slow.call_id not in session.replies

    assert agent.get_count() == 5             # queued behind the slow call: it completed
    assert agent.reply(Msg("u", "after")).content == {"count": 6, "got": "after"}
    fetched = stub.FetchResult(pb.FetchRequest(call_id=slow.call_id, agent_id=agent.agent_id),
                               metadata=local_md(server.port), timeout=10)
    assert fetched.status == pb.OK and _wire.loads(fetched.payload) == 5
    wait_until(lambda: stub.GetInfo(pb.InfoRequest(), metadata=local_md(server.port), timeout=5).inflight == 0,
               timeout=5)


def _ipv6_loopback_available() -> bool:
    import socket
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback here")
def test_server_on_ipv6_loopback(servers):
    s = servers(capacity=4, host="::1")
    agent = Echo("six").to_dist(host="::1", port=s.port)
    assert agent.server == f"[::1]:{s.port}"
    assert agent.ping(6) == 6
