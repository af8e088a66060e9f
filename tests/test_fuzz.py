"""Fuzz a real agent server process over real gRPC with hypothesis.

Malformed requests of every kind: random bytes as the serialized request of
each method, random Session frames (call ids, agent ids, methods, payloads
that are garbage, truncated pickles, wrong shapes or near the size limit),
random call metadata (tokens, versions, extra keys) and CreateAgent requests
with random class references and blobs. Afterwards the server process must be
the same process, serve a normal proxy call, and a pre-created agent that
nothing touched must keep its state. Pickles that write a marker file when
unpickled ride on every unauthenticated request: the marker must never appear.

Default: a short run (about 600 requests). ``AGENTMESH_FUZZ_FULL=1``: at
least 10,000 requests. The counts are printed to stderr.
"""
from __future__ import annotations

import collections
import itertools
import os
import sys
import time
import uuid

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, settings as hsettings, strategies as st

from agentmesh import Msg
from agentmesh.testing import wire as _wire
from agentmesh.v1 import agent_server_pb2 as pb
from conftest import pid_alive
from test_budgets import rss_mib
from fuzz_helpers import (
    FULL, TARGET_REQUESTS, TOKEN, authenticate_once, LIMIT, GRPC_LIMIT, SERVICE, UNARY_METHODS, SAFE_METHODS,
    REPLY_TIMEOUT, check_code, good_metadata, with_digest, Stats, ascii_text, any_text, scalars,
    draw_metadata, draw_payload,
)
from raw_session import RawSession
from sample_agents import Echo
from wire_helpers import class_ref, file_writing_pickle

INSIDE = b"inside the file root " * 30_000   # several chunks
#: how much the fuzzed server may grow (its stored results and shipped classes are bounded; what
#: unauthenticated callers send is never read)
FUZZ_RSS_BOUND_MIB = 200


class Fuzzer:
    """Drives one server: each action sends some malformed requests and checks the answers."""

    def __init__(self, port: int, pid: int, target_id: str, sentinel_id: str, marker: str) -> None:
        self.port = port
        self.pid = pid
        self.target_id = target_id
        self.sentinel_id = sentinel_id
        self.marker = marker
        self.stats = Stats()
        self.ids = itertools.count()
        self.created: set[str] = set()
        self.finished_calls: list[str] = []
        options = [("grpc.max_send_message_length", 4 * GRPC_LIMIT),
                   ("grpc.max_receive_message_length", 4 * GRPC_LIMIT)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
        self.raw = {name: self.channel.unary_unary(SERVICE + name) for name in UNARY_METHODS}
        self.streams = {"DownloadFile": self.channel.unary_stream(SERVICE + "DownloadFile")}
        self.file_root = ""   # the server's file root, set by the test
        authenticate_once(self.channel)
        self.session: RawSession | None = None
        self.echo_ref = class_ref(Echo)
        self.echo_ref_no_blob = pb.ClassRef(name=self.echo_ref.name, digest=self.echo_ref.digest)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.channel.close()

    def _unary(self, method: str, request: bytes, md, label: str) -> tuple[grpc.StatusCode, bytes | None]:
        timeout = 0.05 if method == "FetchResult" else REPLY_TIMEOUT
        self.stats.actions[label] += 1
        try:
            answer = self.raw[method](request, metadata=md, timeout=timeout)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            answer, code = None, exc.code()
            check_code(code, exc.details() or "", method)
        self.stats.rpc(code)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            assert method == "FetchResult", f"{method} did not answer within {timeout} s"
        return code, answer

    def check_alive(self) -> None:
        assert pid_alive(self.pid), "the fuzzed server process died"
        assert not os.path.exists(self.marker), "a payload from an unauthenticated caller was unpickled"

    # -- actions -------------------------------------------------------------------------
    def handshake(self, data) -> None:
        """Handshakes with random challenges (nonce, namespace, address) and bodies: answered or refused."""
        md = dict(_wire.call_metadata())
        nonce = data.draw(st.one_of(st.binary(min_size=16, max_size=16).map(bytes.hex), ascii_text,
                                    st.binary(max_size=40).map(bytes.hex)), label="nonce")
        address = data.draw(st.one_of(st.just(f"127.0.0.1:{self.port}"), st.just(f"localhost:{self.port}"),
                                      ascii_text, st.just(f"127.0.0.1:{self.port + 1}")), label="address")
        namespace = data.draw(st.one_of(st.just("default"), ascii_text), label="namespace")
        for key, value in ((_wire.MD_NONCE, nonce), (_wire.MD_ADDRESS, address), (_wire.MD_NAMESPACE, namespace)):
            if value and data.draw(st.integers(0, 5), label=f"drop {key}"):
                md[key] = value
        body = data.draw(st.one_of(st.just(b""), st.binary(max_size=300)), label="handshake body")
        code, answer = self._unary("Handshake", body, list(md.items()), "handshake")
        if code == grpc.StatusCode.OK:
            assert answer is not None and pb.HandshakeResponse.FromString(answer).proof, "an answer without proof"
            assert md.get(_wire.MD_ADDRESS) in (f"127.0.0.1:{self.port}", f"localhost:{self.port}")
        else:
            assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED), code

    def unauthenticated_large(self, data) -> None:
        """Bodies up to gRPC's limit from callers without a ticket, to every method: none is read."""
        md, authentic = draw_metadata(data, authentic_allowed=False)
        method = data.draw(st.sampled_from([m for m in UNARY_METHODS if m != "Handshake"]), label="method")
        size = data.draw(st.integers(GRPC_LIMIT // 2, GRPC_LIMIT - 1024), label="large size")
        body = file_writing_pickle(self.marker) * (size // 64)
        code, _ = self._unary(method, body[:size], md, "unauthenticated large")
        assert code == grpc.StatusCode.UNAUTHENTICATED, code

    def raw_unary(self, data) -> None:
        method = data.draw(st.sampled_from(UNARY_METHODS), label="method")
        md, _ = draw_metadata(data, authentic_allowed=True) if data.draw(st.integers(0, 3)) == 0 \
            else (good_metadata(), True)
        body = data.draw(st.one_of(st.binary(max_size=400), st.just(b""),
                                   st.binary(max_size=8).map(lambda b: b * 200)), label="request bytes")
        self._unary(method, body, md, "raw bytes")

    def create_agent(self, data) -> None:
        md, _ = draw_metadata(data, authentic_allowed=True) if data.draw(st.integers(0, 3)) == 0 \
            else (good_metadata(), True)
        kind = data.draw(st.sampled_from(["known", "known+blob", "random", "garbage blob", "truncated class",
                                          "not a class", "builtin class", "empty"]), label="class ref")
        if kind == "known":
            cls = self.echo_ref_no_blob
        elif kind == "known+blob":
            cls = self.echo_ref
        elif kind == "random":
            cls = pb.ClassRef(name=data.draw(any_text), digest=data.draw(ascii_text),
                              blob=data.draw(st.binary(max_size=200)))
        elif kind == "garbage blob":
            cls = with_digest(data.draw(any_text), data.draw(st.binary(min_size=1, max_size=300)))
        elif kind == "truncated class":
            blob = self.echo_ref.blob
            cls = with_digest("trunc:Echo", blob[:data.draw(st.integers(1, len(blob) - 1))])
        elif kind == "not a class":
            cls = with_digest("x:NotAClass", _wire.dumps(data.draw(scalars)))
        elif kind == "builtin class":
            cls = with_digest("builtins:dict", _wire.dumps(data.draw(st.sampled_from([dict, list]))))
        else:
            cls = pb.ClassRef()
        agent_id = data.draw(st.one_of(st.just(f"fz-agent-{next(self.ids)}"), any_text,
                                       st.just(self.target_id), st.just(self.sentinel_id),
                                       st.integers(10_000, 200_000).map(lambda n: "a" * n)), label="agent id")
        state = data.draw(st.one_of(st.just(b""), st.binary(max_size=100),
                                    st.builds(lambda d: b"A" + _wire.dumps(d),
                                              st.dictionaries(st.sampled_from(["count", "name", "x"]), scalars,
                                                              max_size=3))), label="state")
        request = pb.CreateAgentRequest(
            agent_id=agent_id, cls=cls, init_args=draw_payload(data, huge=False), state=state,
            state_seq=data.draw(st.integers(0, 2**64 - 1)), checkpoints_on=data.draw(st.booleans()))
        code, answer = self._unary("CreateAgent", request.SerializeToString(), md, f"create: {kind}")
        if code == grpc.StatusCode.OK:
            response = pb.CreateAgentResponse.FromString(answer)
            if response.agent_id in (self.target_id, self.sentinel_id):
                assert response.existed, "re-creating an existing agent must not replace it"
            else:
                self.created.add(response.agent_id)

    def unauthenticated(self, data) -> None:
        """Requests whose metadata the server must refuse, carrying marker-writing pickles."""
        md, authentic = draw_metadata(data, authentic_allowed=False)
        assert not authentic
        which = data.draw(st.sampled_from(["create", "session", "raw"]), label="unauthenticated kind")
        evil = file_writing_pickle(self.marker)
        if which == "create":
            request = pb.CreateAgentRequest(agent_id=f"fz-evil-{next(self.ids)}",
                                            cls=with_digest("evil:Evil", evil), init_args=evil, state=b"A" + evil)
            self._unary("CreateAgent", request.SerializeToString(), md, "unauthenticated create")
        elif which == "raw":
            method = data.draw(st.sampled_from(UNARY_METHODS))
            self._unary(method, evil, md, "unauthenticated raw")
        else:
            self.stats.actions["unauthenticated session"] += 1
            stream = RawSession(self.channel, md)
            calls = [pb.Call(call_id=f"fz-evil-{next(self.ids)}", agent_id=self.target_id, method="ping",
                             payload=evil) for _ in range(data.draw(st.integers(1, 3)))]
            stream.send(*calls)
            code = stream.end_code()
            stream.close()
            self.stats.rpc(code)
            self.stats.session_calls += len(calls)
            self.stats.requests += len(calls)
            assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION), code
            assert not stream.frames and not stream.all_replies, "an unauthenticated session got frames"

    def session_frames(self, data) -> None:
        """Random calls on an authenticated session; every call gets exactly one reply."""
        if self.session is None or self.session.ended:
            self.session = RawSession(self.channel, good_metadata())
            self.stats.rpcs += 1
            self.stats.requests += 1
        calls = []
        wanted: collections.Counter[str] = collections.Counter()
        for _ in range(data.draw(st.integers(1, 4), label="calls in frame")):
            call_id = data.draw(st.one_of(
                st.just(f"fz-call-{next(self.ids)}"), st.just(f"fz-call-{next(self.ids)}"), any_text,
                st.integers(1, 20).map(self.recent_call),
                st.integers(1000, 50_000).map(lambda n: "c" * n)), label="call id")
            agent_id = data.draw(st.one_of(
                st.just(self.target_id), st.just(self.target_id), st.just(self.target_id), any_text,
                st.just(""), st.integers(1000, 50_000).map(lambda n: "g" * n)), label="agent id")
            method = data.draw(st.one_of(st.sampled_from(SAFE_METHODS), any_text,
                                         st.sampled_from(["_secret", "__init__", "__dict__", "__reduce__",
                                                          "__class__", ""]),
                                         st.integers(1000, 50_000).map(lambda n: "m" * n)), label="method")
            if method not in SAFE_METHODS and hasattr(Echo, method) and not method.startswith("_"):
                method = "not_" + method    # slow(), to_dist() ... could block or spawn; not the point here
            epoch = data.draw(st.sampled_from([0, 0, 0, 0, -1]), label="epoch")
            if epoch < 0:
                epoch = data.draw(st.integers(0, 2**64 - 1), label="random epoch")
            payload = draw_payload(data)
            if method == "__getattr__" and data.draw(st.booleans()):
                payload = _wire.dumps(((data.draw(st.sampled_from(["name", "count", "__dict__", "_x", "nope"])),),
                                       {}))
            calls.append(pb.Call(call_id=call_id, agent_id=agent_id, method=method, payload=payload, epoch=epoch))
            wanted[call_id] += 1
        size = sum(len(c.payload) + len(c.call_id) + len(c.agent_id) + len(c.method) for c in calls)
        self.stats.actions["session frame"] += 1
        self.stats.session_calls += len(calls)
        self.stats.requests += len(calls)
        before = collections.Counter(self.session.received)
        stream = self.session
        stream.send(*calls)
        goal = collections.Counter({k: before[k] + n for k, n in wanted.items()})
        if not stream.wait_for(goal):
            code = stream.end_code()
            self.stats.codes[code.name] += 1
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and size > LIMIT, \
                f"the session ended ({code.name}: {stream.error and stream.error.details()}) for a frame of {size} B"
            stream.close()
            self.session = None
            return
        for reply in stream.all_replies[-sum(wanted.values()):]:
            self.stats.reply(reply)
        self.finished_calls.extend(c.call_id for c in calls if len(c.call_id) < 100)

    def raw_session(self, data) -> None:
        """A Session stream fed random bytes as frames."""
        md, authentic = draw_metadata(data, authentic_allowed=True) if data.draw(st.integers(0, 2)) == 0 \
            else (good_metadata(), True)
        self.stats.actions["raw session"] += 1
        stream = RawSession(self.channel, md, raw=True)
        frames = data.draw(st.lists(st.binary(max_size=300), min_size=1, max_size=4), label="raw frames")
        for frame in frames:
            stream.send_frame(frame)
        stream.finish()
        code = stream.end_code()
        stream.close()
        self.stats.rpc(code)
        self.stats.requests += len(frames) - 1
        check_code(code, stream.error.details() if stream.error is not None else "", "raw Session")
        for reply in stream.all_replies:
            self.stats.reply(reply)

    def recent_call(self, back: int) -> str:
        """The id of a call finished back calls ago (a replay), or one never seen."""
        return self.finished_calls[-back] if len(self.finished_calls) >= back else "fz-none"

    def delete_created(self, data) -> None:
        index = data.draw(st.integers(0, 1000), label="created agent")
        created = sorted(self.created)
        agent_id = created[index % len(created)] if created else "fz-none"
        self.created.discard(agent_id)
        self._unary("DeleteAgent", pb.DeleteAgentRequest(agent_id=agent_id).SerializeToString(),
                    good_metadata(), "delete created")

    def fetch(self, data) -> None:
        call_id = data.draw(st.one_of(st.integers(1, 50).map(self.recent_call), any_text))
        self._unary("FetchResult", pb.FetchRequest(call_id=call_id, agent_id=data.draw(any_text))
                    .SerializeToString(), good_metadata(), "fetch")

    def get_state(self, data) -> None:
        agent_id = data.draw(st.one_of(st.just(self.target_id), st.just(self.sentinel_id), any_text))
        self._unary("GetState", pb.StateRequest(agent_id=agent_id).SerializeToString(), good_metadata(),
                    "get state")

    def download(self, data) -> None:
        """A file path, often an escape attempt: only a file inside the root may come back, and whole."""
        root = self.file_root
        path = data.draw(st.one_of(
            st.sampled_from(["inside.txt", f"{root}/inside.txt", "../outside.txt", f"{root}/../outside.txt",
                             f"{root}/link", "link", "/etc/passwd", ".", "", f"{root}/", "sub/../inside.txt",
                             "inside.txt\x00", f"{root}/missing"]),
            st.lists(st.sampled_from(["..", ".", "sub", "inside.txt", "link", "", "x" * 300]), max_size=6)
            .map("/".join), any_text), label="path")
        try:
            chunks = list(self.streams["DownloadFile"](pb.FileRequest(path=path).SerializeToString(),
                                                       metadata=good_metadata(), timeout=REPLY_TIMEOUT))
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            chunks, code = [], exc.code()
            check_code(code, exc.details() or "", "DownloadFile")
        self.stats.rpc(code)
        self.stats.actions["download served" if code == grpc.StatusCode.OK else "download refused"] += 1
        if code == grpc.StatusCode.OK:
            served = os.path.realpath(os.path.join(root, path))
            assert served == os.path.join(root, "inside.txt"), f"{path!r} was served: it is {served}"
            data_back = b"".join(pb.FileChunk.FromString(c).data for c in chunks)
            assert data_back == INSIDE, f"{path!r}: the file came back altered"
        else:
            assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (path, code)

    ACTIONS = ("session_frames", "session_frames", "session_frames", "session_frames", "raw_unary",
               "raw_unary", "create_agent", "create_agent", "unauthenticated", "unauthenticated",
               "raw_session", "delete_created", "fetch", "get_state", "download", "handshake", "handshake",
               "unauthenticated_large")


@pytest.mark.timeout(3600 if FULL else 120)
def test_fuzz_a_real_server(servers, tmp_path, capsys, runtime):
    runtime.configure(token=TOKEN)       # this process's proxies carry the server's token
    root = tmp_path / "files"
    (root / "sub").mkdir(parents=True)
    (root / "inside.txt").write_bytes(INSIDE)
    (tmp_path / "outside.txt").write_bytes(b"secret")
    (root / "link").symlink_to(tmp_path / "outside.txt")
    server = servers(capacity=48, token=TOKEN, max_message_size=LIMIT, file_dir=str(root))
    pid = server.pid
    sentinel = Echo("sentinel").to_dist(host="127.0.0.1", port=server.port)
    target = Echo("target").to_dist(host="127.0.0.1", port=server.port)
    for i in range(3):
        assert sentinel.reply(Msg("u", i)).content["count"] == i + 1
    marker = tmp_path / "unpickled-without-authentication"
    fuzzer = Fuzzer(server.port, pid, target.agent_id, sentinel.agent_id, str(marker))
    fuzzer.file_root = os.path.realpath(root)
    started, rss_before = time.monotonic(), rss_mib(pid)

    @hsettings(max_examples=150 if not FULL else 2000, deadline=None, database=None,
               phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz_once(data) -> None:
        action = data.draw(st.sampled_from(Fuzzer.ACTIONS), label="action")
        getattr(fuzzer, action)(data)
        fuzzer.check_alive()

    try:
        while fuzzer.stats.requests < TARGET_REQUESTS:
            fuzz_once()
        took, rss_after = time.monotonic() - started, rss_mib(pid)

        # The same process serves a normal proxy call; the untouched agent kept its state.
        fuzzer.check_alive()
        assert server.pid == pid and pid_alive(pid)
        assert sentinel.get_count() == 3
        assert sentinel.reply(Msg("u", "after")).content == {"count": 4, "got": "after"}
        assert target.ping("still here") == "still here"
        for agent_id in sorted(fuzzer.created):   # room for a new agent
            fuzzer._unary("DeleteAgent", pb.DeleteAgentRequest(agent_id=agent_id).SerializeToString(),
                          good_metadata(), "cleanup")
        assert Echo("late").to_dist(host="127.0.0.1", port=server.port).ping(7) == 7
        assert not marker.exists()

        # Control: the same marker pickle from an authenticated caller is unpickled, so the check can fail.
        control = tmp_path / "control"
        session = RawSession(fuzzer.channel, good_metadata())
        probe = pb.Call(call_id=uuid.uuid4().hex, agent_id=target.agent_id, method="ping",
                        payload=file_writing_pickle(control))
        session.send(probe)
        session.wait_for(collections.Counter({probe.call_id: 1}))
        session.close()
        assert control.exists()
    finally:
        fuzzer.close()
    stats = fuzzer.stats
    with capsys.disabled():
        print(f"\n{stats.summary()}; {took:.1f} s; server RSS {rss_before:.0f} -> {rss_after:.0f} MiB",
              file=sys.stderr)
    assert rss_after - rss_before < FUZZ_RSS_BOUND_MIB, (rss_before, rss_after)
    assert stats.requests >= TARGET_REQUESTS
    assert len(stats.codes) >= 5 and len(stats.statuses) >= 5
