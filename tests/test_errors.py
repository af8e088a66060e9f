"""Bad input and error reporting, driven against real servers over real gRPC.

Bad calls and bad CreateAgent requests get clear replies and hurt no one;
a class the server cannot import is refused, then shipped by value; unpicklable and
oversized payloads, deleted agents, expired results, a port in use and a full
queue are reported as the right agentmesh error. Raw-gRPC helpers (and the
file-writing pickle that proves whether something was unpickled) are in
wire_helpers.py; the wire contract itself is in test_wire.py.
"""
from __future__ import annotations

import hashlib
import pickle
import sys
import threading
import time
import uuid

import grpc
import pytest

from agentmesh import Msg, RpcAgentServerLauncher
from agentmesh.errors import (
    AgentMeshError,
    MessageTooLargeError,
    PayloadError,
    ResultExpiredError,
    ServerUnavailableError,
    UnknownAgentError,
)
from agentmesh.testing import wire as _wire
from agentmesh.v1 import agent_server_pb2 as pb
from conftest import kill_pid, wait_until
from sample_agents import Echo, Fragile
from wire_helpers import (  # noqa: F401  (raw is a fixture)
    args_payload,
    call,
    class_ref,
    file_writing_pickle,
    local_md,
    metadata,
    proxy,
    raw,
)


# -- bad calls on an authenticated session --------------------------------------------
def test_bad_calls_get_clear_replies_and_hurt_no_one(server, raw, tmp_path):
    target = proxy(Echo, "target", server)
    bystander = proxy(Echo, "bystander", server)
    assert bystander.reply(Msg("u", 1)).content["count"] == 1
    assert bystander.reply(Msg("u", 2)).content["count"] == 2

    session = raw.session(server.port, local_md(server.port))
    hello = session.hello()
    assert hello.max_message_size == _wire.DEFAULT_MAX_MESSAGE_SIZE

    garbage = call(target.agent_id, "ping", b"\x80\x05not a pickle at all")
    unknown_agent = call(uuid.uuid4().hex, "ping", args_payload(1))
    unknown_method = call(target.agent_id, "no_such_method")
    private = call(target.agent_id, "_secret")
    dunder = call(target.agent_id, "__init__", args_payload("hijacked"))
    private_attr = call(target.agent_id, "__getattr__", args_payload("__dict__"))
    session.send(garbage, unknown_agent)
    session.send(unknown_method, private, dunder, private_attr)

    r = session.reply(garbage.call_id)
    assert r.status == pb.BAD_PAYLOAD
    assert "ping()" in r.error_message and "unpickle" in r.error_message
    r = session.reply(unknown_agent.call_id)
    assert r.status == pb.UNKNOWN_AGENT
    assert unknown_agent.agent_id in r.error_message
    r = session.reply(unknown_method.call_id)
    assert r.status == pb.UNKNOWN_METHOD
    assert "no_such_method" in r.error_message
    for c in (private, dunder):
        r = session.reply(c.call_id)
        assert r.status == pb.UNKNOWN_METHOD, c.method
        assert c.method in r.error_message
    r = session.reply(private_attr.call_id)
    assert r.status == pb.UNKNOWN_METHOD and "__dict__" in r.error_message

    # A pickle that writes a file when unpickled IS unpickled here (authenticated caller):
    # proof that the "file does not exist" checks elsewhere can fail.
    probe = tmp_path / "probe"
    evil = call(target.agent_id, "ping", file_writing_pickle(probe))
    session.send(evil)
    assert session.reply(evil.call_id).status == pb.BAD_PAYLOAD
    assert probe.exists()

    # The same session, the target agent, and the bystander's state are all fine.
    good = call(target.agent_id, "ping", args_payload("still here"))
    session.send(good)
    r = session.reply(good.call_id)
    assert r.status == pb.OK and _wire.loads(r.payload) == "still here"
    assert target.get_count() == 0
    assert bystander.get_count() == 2
    assert bystander.reply(Msg("u", 3)).content == {"count": 3, "got": 3}


# -- bad CreateAgent requests -----------------------------------------------------------
def test_bad_create_requests_are_refused_clearly(server, raw):
    _, stub = raw(server.port)
    md = local_md(server.port)
    garbage = b"\x80\x05garbage"

    def refused(request) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateAgent(request, metadata=md, timeout=10)
        return info.value

    err = refused(pb.CreateAgentRequest(agent_id="a1", cls=pb.ClassRef(
        name="m:Bad", digest=hashlib.sha256(garbage).hexdigest(), blob=garbage)))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "m:Bad cannot be loaded" in err.details()

    good = class_ref(Echo)
    err = refused(pb.CreateAgentRequest(agent_id="a2", cls=pb.ClassRef(
        name=good.name, digest="0" * 64, blob=good.blob)))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "does not match its digest" in err.details()

    err = refused(pb.CreateAgentRequest(agent_id="a3", cls=good, init_args=garbage))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "do not unpickle" in err.details()

    err = refused(pb.CreateAgentRequest(agent_id="", cls=good, init_args=args_payload("x")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    info = stub.GetInfo(pb.InfoRequest(), metadata=md, timeout=10)
    assert info.agents == 0
    assert proxy(Echo, "fine", server).ping(3) == 3


def test_class_importable_here_but_not_on_the_server(server, raw, tmp_path, monkeypatch, runtime):
    """The server's sys.path was fixed at launch; a module added later exists only here.

    The server refuses the class by reference (NOT_FOUND naming the import error) and the
    client then ships it by value, once.
    """
    module = f"only_here_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "import os\n"
        "from agentmesh import AgentBase\n\n"
        "class Local(AgentBase):\n"
        "    def where(self):\n"
        "        return os.getpid()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = __import__(module)
    try:
        by_reference = class_ref(mod.Local)
        assert module.encode() in by_reference.blob and len(by_reference.blob) < 200
        _, stub = raw(server.port)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateAgent(pb.CreateAgentRequest(agent_id=uuid.uuid4().hex, cls=by_reference,
                                                   init_args=args_payload("L")),
                             metadata=local_md(server.port), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert f"{module}:Local cannot be loaded" in info.value.details()
        assert "ModuleNotFoundError" in info.value.details()

        first = mod.Local("L1").to_dist(host="127.0.0.1", port=server.port)
        assert first.where() == server.pid
        assert runtime.classes.ref(mod.Local, first._binding.server_id, True).blob == b""
        second = mod.Local("L2").to_dist(host="127.0.0.1", port=server.port)
        assert second.where() == server.pid
    finally:
        sys.modules.pop(module, None)
    assert proxy(Echo, "fine", server).ping(4) == 4


# -- the client API -------------------------------------------------------------------------
def test_unpicklable_arguments_fail_before_sending(server):
    agent = proxy(Echo, "E", server)
    with pytest.raises(PayloadError) as info:
        agent.reply(threading.Lock())           # asynchronous: still raises at the call
    assert "reply()" in str(info.value) and "lock" in str(info.value)
    with pytest.raises(PayloadError):
        agent.ping(threading.Lock())
    assert agent.get_count() == 0               # reply never ran
    assert agent.reply(Msg("u", "ok")).content == {"count": 1, "got": "ok"}


def test_unpicklable_result_is_a_payload_error_naming_the_method(server):
    agent = proxy(Fragile, "F", server)
    with pytest.raises(PayloadError) as info:
        agent.make_lock()
    assert "make_lock()" in str(info.value)
    assert "pickle" in str(info.value)
    assert agent.reply(Msg("u", 1)).content["count"] == 1


def test_oversized_messages_name_the_limit_and_the_size(servers, raw):
    limit = 1_000_000
    s = servers(capacity=8, max_message_size=limit)
    agent = proxy(Fragile, "F", s)
    big = b"\x01" * (2 * limit)
    size = len(_wire.dumps(((big,), {})))
    with pytest.raises(MessageTooLargeError) as info:
        agent.ping(big)
    assert f"{limit}" in str(info.value) and f"{size}" in str(info.value)
    assert agent.ping(1) == 1

    # The server enforces its limit itself (a caller that ignores the Hello).
    session = raw.session(s.port, local_md(s.port))
    assert session.hello().max_message_size == limit
    over = call(agent.agent_id, "ping", b"\x02" * (limit + 10_000))
    session.send(over)
    r = session.reply(over.call_id)
    assert r.status == pb.TOO_LARGE
    assert f"{limit}" in r.error_message and f"{limit + 10_000}" in r.error_message

    # A frame over even gRPC's own limit ends that stream with RESOURCE_EXHAUSTED, nothing more.
    huge = raw.session(s.port, local_md(s.port))
    huge.hello()
    huge.send(call(agent.agent_id, "ping", b"\x03" * (2 * limit)))
    error = huge.wait_end()
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = call(agent.agent_id, "ping", args_payload("same server"))
    session.send(after)
    assert _wire.loads(session.reply(after.call_id).payload) == "same server"

    # A result over the limit.
    with pytest.raises(MessageTooLargeError) as info:
        agent.blob(limit + 100_000)
    assert "blob()" in str(info.value) and f"{limit}" in str(info.value)

    assert agent.reply(Msg("u", "x")).content["count"] == 1
    assert len(agent.blob(limit // 2)) == limit // 2


def test_deleted_agent_is_an_unknown_agent_error(server, raw):
    agent = proxy(Echo, "E", server)
    other = proxy(Echo, "O", server)
    assert agent.ping(1) == 1
    _, stub = raw(server.port)
    assert stub.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent.agent_id), metadata=local_md(server.port),
                            timeout=10).deleted
    with pytest.raises(UnknownAgentError) as info:
        agent.get_count()
    assert agent.agent_id in str(info.value)
    pending = agent.reply(Msg("u", 1))
    with pytest.raises(UnknownAgentError):
        pending.result(timeout=5)
    assert other.ping(2) == 2


# -- result expiry --------------------------------------------------------------------------
@pytest.mark.parametrize("later_calls", [2, 5])   # one eviction, and more (past the remembered ids)
def test_evicted_result_expires_quickly(servers, later_calls):
    s = servers(capacity=8, result_ttl=1.0, max_results=2)
    agent = proxy(Echo, "E", s)
    pending = agent.slow(0.3, "late")
    data = pickle.dumps(pending)
    assert not pending.done()
    assert pending.result(timeout=10) == "late"
    assert pickle.loads(data).result(timeout=5) == "late"   # still kept
    for i in range(later_calls):
        assert agent.ping(i) == i                            # the third result evicts the first
    start = time.monotonic()
    with pytest.raises(ResultExpiredError) as info:
        pickle.loads(data).result(timeout=5)
    assert time.monotonic() - start < 2.0
    assert "expired" in str(info.value) and pending.call_id in str(info.value)
    assert agent.ping("alive") == "alive"


def test_result_expires_after_its_ttl(servers, raw):
    s = servers(capacity=8, result_ttl=1.0)
    agent = proxy(Echo, "E", s)
    pending = agent.slow(0.2, "late")
    data = pickle.dumps(pending)
    assert not pending.done()
    assert pending.result(timeout=10) == "late"
    _, stub = raw(s.port)

    def fetch_refused() -> bool:
        try:
            reply = stub.FetchResult(pb.FetchRequest(call_id=pending.call_id, agent_id=agent.agent_id),
                                     metadata=local_md(s.port), timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            return True
        assert reply.status == pb.OK and _wire.loads(reply.payload) == "late"
        return False

    wait_until(fetch_refused, timeout=10, interval=0.1)
    start = time.monotonic()
    with pytest.raises(ResultExpiredError) as info:
        pickle.loads(data).result(timeout=5)
    assert time.monotonic() - start < 2.0
    assert "expired" in str(info.value)
    assert agent.ping("alive") == "alive"


# -- port in use ----------------------------------------------------------------------
def test_port_in_use_in_this_process(server):
    launcher = RpcAgentServerLauncher(host="127.0.0.1", port=server.port)
    try:
        with pytest.raises((OSError, AgentMeshError)) as info:
            launcher.launch(in_subprocess=False)
        assert str(server.port) in str(info.value)
    finally:
        if launcher._server is not None and launcher._server._server is not None:
            launcher.shutdown()
    assert proxy(Echo, "E", server).ping(1) == 1


def test_port_in_use_in_a_subprocess(server):
    """A busy port fails the launch, naming the port; the child exits non-zero; the server there is untouched."""
    launcher = RpcAgentServerLauncher(host="127.0.0.1", port=server.port)
    try:
        with pytest.raises((OSError, ServerUnavailableError)) as info:
            launcher.launch(in_subprocess=True)
        assert str(server.port) in str(info.value)
        assert launcher._process is not None and launcher._process.proc.wait(10) != 0
    finally:
        if launcher._process is not None:
            kill_pid(launcher._process.pid)
            launcher._process.proc.wait()
    assert proxy(Echo, "E", server).ping(1) == 1


def test_too_many_pending_calls_get_a_backpressure_error(servers):
    from agentmesh.errors import BackpressureError

    s = servers(capacity=4, max_pending_calls=5)
    agent = Echo("E").to_dist(host="127.0.0.1", port=s.port)
    assert agent.ping(0) == 0
    pending = [agent.slow(0.2, i) for i in range(10)]
    outcomes = []
    for p in pending:
        try:
            outcomes.append(p.result(timeout=30))
        except BackpressureError as exc:
            assert "limit 5" in str(exc)
            outcomes.append("refused")
    assert outcomes[:5] == [0, 1, 2, 3, 4]
    assert outcomes[5:] == ["refused"] * 5
    assert agent.ping(7) == 7      # once the queue drains, the agent takes calls again
