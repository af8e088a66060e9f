"""Frames encoded by hand (agentmesh._frames) parse as the protobuf messages they stand for, and a large payload
travels by reference from the pickler to the frame: end to end through a real server, and across a failover."""
from __future__ import annotations

import os
import pickle

import cloudpickle
import pytest

from agentmesh import _codec, _frames
from agentmesh._client.slot import CallSlot
from agentmesh.v1 import agent_server_pb2 as pb
from conftest import kill_pid
from sample_agents import Echo


def _tag(message: type, field: str) -> bytes:
    number = message.DESCRIPTOR.fields_by_name[field].number
    return bytes(((number << 3) | 2,))   # length-delimited


def test_the_hand_written_tags_are_the_protos():
    assert _frames.CLIENT_FRAME_CALLS == _tag(pb.ClientFrame, "calls")
    assert _frames.SERVER_FRAME_REPLIES == _tag(pb.ServerFrame, "replies")
    assert _frames.CALL_PAYLOAD == _tag(pb.Call, "payload")
    assert _frames.REPLY_PAYLOAD == _tag(pb.Reply, "payload")
    assert _frames.REPLY_STATE == _tag(pb.Reply, "state")


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16_383, 16_384, 10 ** 7, 2 ** 35])
def test_varints_are_protobufs(n):
    assert pb.Reply.FromString(b"\x38" + _frames.varint(n)).seq == n   # Reply.seq = 7, a varint


def test_a_client_frame_parses_as_the_calls_it_carries():
    big = os.urandom(300_000)
    slots = [CallSlot(pb.Call(call_id="a", agent_id="x", method="m", epoch=3, trace={"traceparent": "t"}),
                      payload=[b"head", big, b"tail"]),
             CallSlot(pb.Call(call_id="b", agent_id="y", method="__create__", payload=b"inside")),
             CallSlot(pb.Call(call_id="c", agent_id="z", method="n", notify=True), payload=[b"small"])]
    frame = pb.ClientFrame.FromString(_frames.client_frame(slots))
    assert [c.call_id for c in frame.calls] == ["a", "b", "c"]
    assert frame.calls[0].payload == b"head" + big + b"tail" and slots[0].size == len(big) + 8
    assert frame.calls[0].epoch == 3 and dict(frame.calls[0].trace) == {"traceparent": "t"}
    assert frame.calls[1].payload == b"inside" and frame.calls[2].payload == b"small" and frame.calls[2].notify


def test_a_server_frame_parses_as_the_replies_it_carries():
    big, state = os.urandom(_frames.LARGE * 3), os.urandom(_frames.LARGE + 1)
    replies = [pb.Reply(call_id="a", status=pb.OK, payload=big, seq=9, state=state),
               pb.Reply(call_id="b", status=pb.OK, payload=b"small", seq=2),
               pb.Reply(call_id="c", status=pb.ERROR, error_message="no", state=state,
                        answered=[pb.Reply(call_id="old", payload=b"p")]),
               pb.Reply(agent_id="pushed", seq=4, state=b"s")]
    frame = pb.ServerFrame.FromString(_frames.server_frame(replies))
    assert list(frame.replies) == replies
    assert replies[0].payload == big   # the reply written is left as it was


def test_a_large_bytes_argument_is_a_part_of_its_own_not_a_copy():
    big = os.urandom(1_000_000)
    parts = _codec.dumps_parts(((big,), {}))
    assert any(part is big for part in parts)
    assert pickle.loads(b"".join(parts)) == ((big,), {})


def test_a_bytearray_argument_is_copied_when_pickled():
    data = bytearray(os.urandom(200_000))
    parts = _codec.dumps_parts(data)
    data[:4] = b"\0\0\0\0"   # the caller changes it while the call waits to be sent: the call keeps what it got
    assert all(type(part) is bytes for part in parts) and bytes(pickle.loads(b"".join(parts)))[:4] != b"\0\0\0\0"


def test_objects_of_main_are_pickled_by_cloudpickle_by_value():
    class Local:
        pass

    Local.__module__ = "__main__"
    Local.__qualname__ = "Local"
    for obj in (Local, Local(), [1, {"a": (Local(),)}]):
        assert _codec.dumps_parts(obj) == (cloudpickle.dumps(obj, protocol=5),)
    assert _codec.dumps_parts([1, "__main__", b"__main__"]) == (pickle.dumps([1, "__main__", b"__main__"], 5),)


def test_large_arguments_results_and_state_cross_a_real_server_and_a_failover(server):
    agent = Echo("hoard").to_dist(host="127.0.0.1", port=server.port)
    big = os.urandom(3_000_000)
    assert agent.ping(big) == big
    answer = agent.reply(big)          # the agent keeps what it heard: its state is over 3 MB now
    assert answer.content["got"] == big and answer.content["count"] == 1
    kill_pid(server.pid)
    assert agent.get_count() == 1      # re-created from the 3 MB checkpoint the reply carried
    assert agent.ping(big[:100]) == big[:100]
