"""The wire contract and bad input, driven against real servers over real gRPC.

Most tests speak raw gRPC (hand-built requests and metadata) so they check the
server itself, not what the agentmesh client happens to send. A "file-writing
pickle" (unpickling it creates a file) proves whether a payload was unpickled.
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
from grpc_health.v1 import health_pb2, health_pb2_grpc

import agentmesh
from agentmesh import AgentBase, Msg, RpcAgentServerLauncher
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
from agentmesh.v1 import agent_server_pb2_grpc as pb_grpc
from raw_session import RawSession
from conftest import kill_pid, wait_until
from sample_agents import Echo, Fragile

TOKEN = "s3cret"


# -- helpers ------------------------------------------------------------------
class _CreatesFile:
    """Unpickling one of these runs open(path, "w"): the file's existence proves unpickling."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def file_writing_pickle(path) -> bytes:
    return pickle.dumps(_CreatesFile(str(path)), protocol=5)


def metadata(token: str | None = None, **overrides: str | None) -> tuple[tuple[str, str], ...]:
    """call_metadata(token) with some keys replaced (None removes a key)."""
    md = dict(_wire.call_metadata(token))
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
        return channel, pb_grpc.AgentServerStub(channel)

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
    return cls(name, *args).to_dist(host="127.0.0.1", port=launcher.port)


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
    bad_md = metadata(None, **overrides)
    target = proxy(Echo, "target", server)       # a real agent, so a call to it would be unpickled
    _, stub = raw(server.port)

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
        stub.CreateAgent(evil_create_request(control), metadata=metadata(None), timeout=10)
    assert control.exists()
    assert target.get_count() == 0


# -- token gate ----------------------------------------------------------------------
def test_token_is_required_and_checked_before_unpickling(servers, raw, tmp_path):
    s = servers(capacity=8, token=TOKEN)
    channel, stub = raw(s.port)
    echo_id = uuid.uuid4().hex
    right = metadata(TOKEN)

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

    for label, md, words in (("missing", metadata(None), "missing token"),
                             ("wrong", metadata("not-" + TOKEN), "wrong token"),
                             ("empty", metadata(None, **{_wire.MD_TOKEN: ""}), "missing token")):
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


def test_client_api_reports_a_wrong_token(servers, runtime):
    s = servers(capacity=8, token=TOKEN)
    # This process sends its own (generated) token, not the server's.
    runtime.configure(token=None)
    with pytest.raises(agentmesh.errors.AuthenticationError, match="wrong token"):
        Echo("x").to_dist(host="127.0.0.1", port=s.port)


# -- bad calls on an authenticated session --------------------------------------------
def test_bad_calls_get_clear_replies_and_hurt_no_one(server, raw, tmp_path):
    target = proxy(Echo, "target", server)
    bystander = proxy(Echo, "bystander", server)
    assert bystander.reply(Msg("u", 1)).content["count"] == 1
    assert bystander.reply(Msg("u", 2)).content["count"] == 2

    session = raw.session(server.port, metadata(None))
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
    md = metadata(None)
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
                             metadata=metadata(None), timeout=10)
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
    session = raw.session(s.port, metadata(None))
    assert session.hello().max_message_size == limit
    over = call(agent.agent_id, "ping", b"\x02" * (limit + 10_000))
    session.send(over)
    r = session.reply(over.call_id)
    assert r.status == pb.TOO_LARGE
    assert f"{limit}" in r.error_message and f"{limit + 10_000}" in r.error_message

    # A frame over even gRPC's own limit ends that stream with RESOURCE_EXHAUSTED, nothing more.
    huge = raw.session(s.port, metadata(None))
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


def test_replies_that_together_exceed_the_limit_are_each_delivered(servers, raw):
    limit = 1_000_000
    s = servers(capacity=8, max_message_size=limit)
    agent = proxy(Fragile, "F", s)
    session = raw.session(s.port, metadata(None))
    session.hello()
    size = int(limit * 0.9)
    calls = [call(agent.agent_id, "blob", args_payload(size)) for _ in range(3)]
    for c in calls:                       # one at a time: each reply fits in a frame of its own
        session.send(c)
        assert session.reply(c.call_id).status == pb.OK
    # Replays of finished calls (as after a reconnect) are answered at once, all together.
    replay = raw.session(s.port, metadata(None))
    replay.hello()
    replay.send(*[pb.Call(call_id=c.call_id, agent_id=c.agent_id, method=c.method) for c in calls])
    for c in calls:
        reply = replay.reply(c.call_id)
        assert reply.status == pb.OK and len(_wire.loads(reply.payload)) == size


def test_deleted_agent_is_an_unknown_agent_error(server, raw):
    agent = proxy(Echo, "E", server)
    other = proxy(Echo, "O", server)
    assert agent.ping(1) == 1
    _, stub = raw(server.port)
    assert stub.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent.agent_id), metadata=metadata(None),
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
                                     metadata=metadata(None), timeout=5)
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
                                 metadata=metadata(None), timeout=10)
    assert response.name == "c"
    _, stub2 = raw(s2.port)
    with pytest.raises(grpc.RpcError) as info:
        stub2.CreateAgent(pb.CreateAgentRequest(agent_id=uuid.uuid4().hex, cls=ref,
                                                init_args=args_payload("d", 1)),
                          metadata=metadata(None), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unknown class digest" in info.value.details()
    third = Tally("e", 3).to_dist(host="127.0.0.1", port=s2.port)
    assert third.add() == 3


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
    launcher = RpcAgentServerLauncher(host="127.0.0.1", port=server.port)
    try:
        with pytest.raises((OSError, ServerUnavailableError)) as info:
            launcher.launch(in_subprocess=True)
        assert str(server.port) in str(info.value)
    finally:
        if launcher._process is not None:
            kill_pid(launcher._process.pid)
            launcher._process.proc.wait()
    assert proxy(Echo, "E", server).ping(1) == 1


def test_port_in_use_in_a_subprocess_is_an_error(server):
    """The part of the above that holds today: it fails, and the server on the port is untouched."""
    launcher = RpcAgentServerLauncher(host="127.0.0.1", port=server.port)
    try:
        with pytest.raises((OSError, ServerUnavailableError)):
            launcher.launch(in_subprocess=True)
        assert launcher._process is not None and launcher._process.proc.wait(10) != 0
    finally:
        if launcher._process is not None:
            kill_pid(launcher._process.pid)
            launcher._process.proc.wait()
    assert proxy(Echo, "E", server).ping(1) == 1


# -- a client that goes away mid-call ------------------------------------------------------
def test_client_disconnect_during_a_call(server, raw):
    agent = proxy(Fragile, "F", server)
    _, stub = raw(server.port)
    session = raw.session(server.port, metadata(None))
    session.hello()
    slow = call(agent.agent_id, "slow_add", args_payload(1.0, 5))
    session.send(slow)
    wait_until(lambda: stub.GetInfo(pb.InfoRequest(), metadata=metadata(None), timeout=5).inflight >= 1,
               timeout=5)
    session.close()
    assert session.wait_end() is not None     # cancelled on our side
    assert slow.call_id not in session.replies

    assert agent.get_count() == 5             # queued behind the slow call: it completed
    assert agent.reply(Msg("u", "after")).content == {"count": 6, "got": "after"}
    fetched = stub.FetchResult(pb.FetchRequest(call_id=slow.call_id, agent_id=agent.agent_id),
                               metadata=metadata(None), timeout=10)
    assert fetched.status == pb.OK and _wire.loads(fetched.payload) == 5
    wait_until(lambda: stub.GetInfo(pb.InfoRequest(), metadata=metadata(None), timeout=5).inflight == 0,
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
