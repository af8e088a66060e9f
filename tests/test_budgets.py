"""What one server holds at most, whatever its clients do: measured on real server processes.

Stored replies keep no checkpoint and go with their agent; the result store
has a byte budget; a client that stops reading its session holds the server
back by backpressure, not by memory; waiting result fetches are capped; the
class cache is bounded and an evicted class is simply sent again.
"""
from __future__ import annotations

import collections
import queue
import time
import uuid

import grpc
import pytest

from agentmesh import Msg, _protocol, _status
from agentmesh._client.slot import ResultRef
from agentmesh._runtime import default_runtime
from agentmesh.errors import BackpressureError
from agentmesh.server._classes import ClassNotSent, HostedClasses
from agentmesh.server._results import GONE_BYTES, GONE_COUNT, GONE_DELETED, ResultStore
from agentmesh.testing import wire as _wire
from agentmesh.v1 import agent_server_pb2 as pb
from conftest import wait_until
from raw_session import SESSION_METHOD
from sample_agents import Echo, Heavy, Recorder, Sleeper
from wire_helpers import args_payload, call, class_ref, local_md, metadata, raw  # noqa: F401  (raw is a fixture)

MIB = 1 << 20
#: what the server may grow by beyond the agent's own state, in MiB
GROWTH_BUDGET_MIB = 40


def rss_mib(pid: int) -> float:
    """Resident memory of process pid, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def create(stub, cls: type, *args, checkpoint: bool = False) -> str:
    agent_id = uuid.uuid4().hex
    stub.CreateAgent(pb.CreateAgentRequest(agent_id=agent_id, cls=class_ref(cls), init_args=args_payload(*args),
                                           checkpoints_on=checkpoint), metadata=local_md(stub.port), timeout=10)
    return agent_id


def fetch(stub, call_id: str, timeout: float = 10) -> pb.Reply:
    return stub.FetchResult(pb.FetchRequest(call_id=call_id), metadata=local_md(stub.port), timeout=timeout)


def fetch_error(stub, call_id: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fetch(stub, call_id)
    return info.value


def status_in(exc: grpc.RpcError) -> str:
    return dict(exc.trailing_metadata() or ()).get(_wire.MD_STATUS, "")


# -- checkpoints are not stored; results go with their agent -----------------------------
def test_an_agent_with_1_mib_of_state_does_not_grow_the_server_by_its_checkpoints(servers, raw):
    """300 calls on a checkpointed 1 MiB agent: the server grew ~300 MiB before; now under the budget."""
    s = servers(capacity=8)
    base = settled(lambda: round(rss_mib(s.pid)), interval=0.2)
    agent = Heavy("heavy").to_dist(host="127.0.0.1", port=s.port)
    for i in range(300):
        assert agent.noop(i) == i
    grown = rss_mib(s.pid) - base
    assert grown < 1 + GROWTH_BUDGET_MIB, f"server grew {grown:.1f} MiB over 300 calls"
    checkpoint = agent._binding.checkpoint
    seq, state = checkpoint.seq, checkpoint.state
    assert seq == 300 and len(state) > MIB      # the caller still got the checkpoint of every call

    session = raw.session(s.port, local_md(s.port))
    session.hello()
    last = call(agent.agent_id, "noop", args_payload("last"))
    session.send(last)
    assert session.reply(last.call_id).state == b""     # not the agent's creator: the state goes to the creator
    wait_until(lambda: agent._binding.checkpoint.seq == 301)
    assert len(agent._binding.checkpoint.state) > MIB
    _, stub = raw(s.port)
    assert fetch(stub, last.call_id).state == b""
    assert stub.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent.agent_id), metadata=local_md(s.port),
                            timeout=10).deleted
    del agent
    error = fetch_error(stub, last.call_id)
    assert status_in(error) == "EXPIRED" and GONE_DELETED in error.details()
    assert rss_mib(s.pid) - base < 1 + GROWTH_BUDGET_MIB


def test_stored_results_keep_no_checkpoint_and_go_with_their_agent(server, raw):
    _, stub = raw(server.port)
    agent_id = create(stub, Heavy, "h", 256 * 1024, checkpoint=True)
    session = raw.session(server.port, local_md(server.port))
    session.hello()
    first = call(agent_id, "noop", args_payload(7))
    session.send(first)
    owned = session.reply(first.call_id)
    assert owned.status == pb.OK and owned.seq == 1 and len(owned.state) > 256 * 1024
    stored = fetch(stub, first.call_id)            # what another holder of the placeholder gets
    assert _wire.loads(stored.payload) == 7 and stored.seq == 1 and stored.state == b""

    running = call(agent_id, "nap", args_payload(1.0, "slept"))
    session.send(running)
    wait_until(lambda: stub.GetInfo(pb.InfoRequest(), metadata=local_md(server.port), timeout=5).inflight >= 1)
    waiting = stub.FetchResult.future(pb.FetchRequest(call_id=running.call_id), metadata=local_md(server.port),
                                      timeout=10)
    assert stub.DeleteAgent(pb.DeleteAgentRequest(agent_id=agent_id), metadata=local_md(server.port), timeout=10).deleted
    assert _wire.loads(waiting.result().payload) == "slept"     # a waiter still gets the call it waited for
    assert session.reply(running.call_id).status == pb.OK
    for call_id in (first.call_id, running.call_id):           # and then nothing of the agent is kept
        error = fetch_error(stub, call_id)
        assert error.code() == grpc.StatusCode.NOT_FOUND and status_in(error) == "EXPIRED"
        assert GONE_DELETED in error.details() and call_id in error.details()


def test_the_result_store_has_a_byte_budget(servers, raw):
    s = servers(capacity=4, max_result_bytes=MIB)
    _, stub = raw(s.port)
    agent_id = create(stub, Heavy, "h", 0)
    session = raw.session(s.port, local_md(s.port))
    session.hello()
    calls = [call(agent_id, "make", args_payload(300_000)) for _ in range(6)]
    for c in calls:
        session.send(c)
    session.wait_for(collections.Counter(c.call_id for c in calls))
    error = fetch_error(stub, calls[0].call_id)                  # oldest out first
    assert status_in(error) == "EXPIRED" and GONE_BYTES in error.details()
    assert len(fetch(stub, calls[-1].call_id).payload) > 300_000


def test_result_store_bounds_in_process():
    store = ResultStore(max_results=3, ttl=60.0, max_bytes=10_000)
    for i in range(4):
        store.finish(pb.Reply(call_id=f"c{i}", payload=b"x" * 100), "a")
    assert store.get("c0") is None and store.why_gone("c0") == GONE_COUNT and len(store) == 3
    store.finish(pb.Reply(call_id="big", payload=b"x" * 9_700), "b")
    assert store.why_gone("c1") == GONE_COUNT and store.why_gone("c2") == GONE_BYTES and store.bytes <= 10_000
    assert store.drop_agent("a") == 1 and store.why_gone("c3") == GONE_DELETED
    store.finish(pb.Reply(call_id="late", payload=b"x"), "b", keep=False)
    assert store.get("late") is None and store.why_gone("late") == GONE_DELETED
    assert store.drop_agent("b") == 1 and store.bytes == 0 and len(store) == 0


# -- backpressure on a session whose client stops reading -------------------------------------
class StalledSession:
    """A Session stream whose replies are not read until drain(): its own connection, calls from a queue."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.use_local_subchannel_pool", 1), *_protocol.channel_options(_wire.DEFAULT_MAX_MESSAGE_SIZE)])
        self._calls: queue.Queue = queue.Queue()
        method = self.channel.stream_stream(SESSION_METHOD, request_serializer=pb.ClientFrame.SerializeToString,
                                            response_deserializer=pb.ServerFrame.FromString)
        self.responses = method(iter(self._calls.get, None), metadata=local_md(port), timeout=120)
        assert next(self.responses).HasField("hello")

    def send(self, calls: list[pb.Call]) -> None:
        self._calls.put(pb.ClientFrame(calls=calls))

    def drain(self, count: int) -> list[pb.Reply]:
        replies: list[pb.Reply] = []
        for frame in self.responses:
            replies.extend(frame.replies)
            if len(replies) >= count:
                break
        return replies

    def close(self) -> None:
        self._calls.put(None)
        self.responses.cancel()
        self.channel.close()


def settled(read, timeout: float = 30.0, interval: float = 0.5) -> int:
    """read() once it gives the same value twice in a row, interval s apart."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError(f"still changing after {timeout} s: {last}")


def test_a_client_that_stops_reading_is_held_back_not_buffered(servers, raw):
    """400 replies of 256 KiB (100 MiB) for a client that reads none: the server stops reading its calls.

    The client makes its calls over 0.8 s, as a program would; what the server
    holds is the budget plus the replies of the calls it had read by then.
    """
    s = servers(capacity=4, session_backlog_bytes=4 * MIB, max_result_bytes=4 * MIB)
    _, stub = raw(s.port)
    agent_id = create(stub, Heavy, "h", 0)
    probe = raw.session(s.port, local_md(s.port))
    probe.hello()

    def made() -> int:
        c = call(agent_id, "get_made")
        probe.send(c)
        return _wire.loads(probe.reply(c.call_id).payload)

    assert made() == 0
    base = rss_mib(s.pid)
    stalled = StalledSession(s.port)
    try:
        calls = [call(agent_id, "make", args_payload(256 * 1024)) for _ in range(400)]
        for i in range(0, len(calls), 10):
            stalled.send(calls[i:i + 10])
            time.sleep(0.02)
        ran = settled(made)
        grown = rss_mib(s.pid) - base
        assert 0 < ran < 400, f"{ran} of 400 calls ran for a client that reads nothing"
        assert grown < GROWTH_BUDGET_MIB, f"server grew {grown:.1f} MiB for a client that reads nothing"
        replies = stalled.drain(400)                  # reading again: every reply comes, in order
        assert [r.call_id for r in replies] == [c.call_id for c in calls]
        assert all(r.status == pb.OK and len(r.payload) > 256 * 1024 for r in replies)
        assert made() == 400
    finally:
        stalled.close()


# -- a cap on waiting fetches -----------------------------------------------------------
def test_waiting_result_fetches_are_capped(servers, raw):
    s = servers(capacity=4, max_fetch_waiters=4)
    _, stub = raw(s.port)
    agent_id = create(stub, Heavy, "h", 0)
    session = raw.session(s.port, local_md(s.port))
    session.hello()
    running = call(agent_id, "nap", args_payload(2.5, "done"))
    session.send(running)
    wait_until(lambda: stub.GetInfo(pb.InfoRequest(), metadata=local_md(s.port), timeout=5).inflight >= 1)
    request = pb.FetchRequest(call_id=running.call_id, agent_id=agent_id)
    waiters = [stub.FetchResult.future(request, metadata=local_md(s.port), timeout=20) for _ in range(4)]
    refusals: list[grpc.RpcError] = []

    def refused() -> bool:
        try:
            stub.FetchResult(request, metadata=local_md(s.port), timeout=0.3)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                refusals.append(exc)
                return True
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
        return False

    wait_until(refused, timeout=5, interval=0)
    assert status_in(refusals[0]) == "OVERLOADED" and "max_fetch_waiters" in refusals[0].details()
    runtime = default_runtime()                       # a placeholder's fetch says so as a BackpressureError
    reply = runtime.run(runtime.pool.fetch(ResultRef(s.server_id, s.address, agent_id, running.call_id)), 10)
    assert isinstance(_status.reply_error(reply), BackpressureError) and "max_fetch_waiters" in reply.error_message
    assert all(_wire.loads(w.result().payload) == "done" for w in waiters)
    again = call(agent_id, "nap", args_payload(0.3, "again"))   # the waiters' places are free again
    session.send(again)
    assert _wire.loads(fetch(stub, again.call_id).payload) == "again"


# -- the class cache --------------------------------------------------------------------
def test_the_class_cache_is_bounded_and_an_evicted_class_is_sent_again(servers, raw):
    s = servers(capacity=16, max_classes=2)
    first = Echo("first").to_dist(host="127.0.0.1", port=s.port)
    assert first.ping(1) == 1
    others = [Sleeper("s", 0.0).to_dist(host="127.0.0.1", port=s.port),
              Recorder("r").to_dist(host="127.0.0.1", port=s.port)]   # Echo is now the least recently used
    assert others[0].reply(Msg("u", 1)).content == 2 and others[1].get_seen() == []
    _, stub = raw(s.port)
    digest_only = pb.ClassRef(name=class_ref(Echo).name, digest=class_ref(Echo).digest)
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateAgent(pb.CreateAgentRequest(agent_id=uuid.uuid4().hex, cls=digest_only,
                                               init_args=args_payload("x")), metadata=local_md(s.port), timeout=10)
    assert status_in(info.value) == "CLASS_NOT_SENT"
    assert first.ping(2) == 2                          # its agent never needed the cache
    second = Echo("second").to_dist(host="127.0.0.1", port=s.port)   # this client sends the digest only
    assert second.ping(3) == 3 and second.reply(Msg("u", "hi")).content["count"] == 1


def test_class_cache_bounds_in_process():
    given = HostedClasses([Echo], max_classes=2, max_bytes=10 ** 9)
    assert given.resolve(pb.ClassRef(digest=class_ref(Echo).digest)) is Echo    # given at start: for good
    refs = [class_ref(cls) for cls in (Sleeper, Recorder, Heavy)]
    for ref in refs[:2]:
        given.resolve(ref)
    given.resolve(pb.ClassRef(digest=refs[0].digest))                          # Sleeper used: Recorder is older
    given.resolve(refs[2])
    with pytest.raises(ClassNotSent):
        given.resolve(pb.ClassRef(digest=refs[1].digest))
    assert given.resolve(pb.ClassRef(digest=refs[0].digest)) is Sleeper and len(given) == 2
    by_bytes = HostedClasses([], max_bytes=len(refs[0].blob) + len(refs[1].blob) - 1)
    for ref in refs[:2]:
        by_bytes.resolve(ref)
    assert len(by_bytes) == 1 and by_bytes.shipped_bytes == len(refs[1].blob)


def test_a_replayed_call_brings_the_state_it_left_when_it_was_the_last(server, raw):
    """A session dropped before its reply arrived: the replay on a new session carries a fresh checkpoint."""
    _, stub = raw(server.port)
    agent_id = create(stub, Heavy, "h", 1024, checkpoint=True)
    first_session = raw.session(server.port, local_md(server.port))
    first_session.hello()
    first, second = call(agent_id, "noop", args_payload(1)), call(agent_id, "noop", args_payload(2))
    first_session.send(first)
    assert first_session.reply(first.call_id).seq == 1
    first_session.send(second)
    original = first_session.reply(second.call_id)
    assert original.seq == 2 and original.state

    again = raw.session(server.port, local_md(server.port))       # the caller lost its session and replays both
    again.hello()
    again.send(first)
    again.send(second)
    stale, latest = again.reply(first.call_id), again.reply(second.call_id)
    assert stale.seq == 1 and stale.state == b""           # a later call completed: no state older than it
    assert latest.seq == 2 and latest.state == original.state and _wire.loads(latest.payload) == 2
    assert stub.GetInfo(pb.InfoRequest(), metadata=local_md(server.port), timeout=5).inflight == 0   # nothing re-ran
