"""Batching calls and replies into frames that stay under the message size limit (both ends)."""
from __future__ import annotations

import collections
from typing import Callable, TypeVar

T = TypeVar("T")

#: a frame carries at most max_message_size / FRAME_FRACTION bytes of payload
FRAME_FRACTION = 2
#: what a call or reply costs in a frame beyond its byte fields
ITEM_OVERHEAD = 64


def kept_bytes(reply) -> int:   # noqa: ANN001 - a pb.Reply (this module knows no protobuf)
    """What keeping a finished call's reply costs: its byte fields and a little for the rest."""
    return len(reply.payload) + len(reply.traceback) + len(reply.error_message) + ITEM_OVERHEAD


def frame_budget(max_message_size: int) -> int:
    """The payload bytes one frame may carry."""
    return max(1, max_message_size // FRAME_FRACTION)


def take_batch(queue: collections.deque[T], cost: Callable[[T], int], budget: int) -> list[T]:
    """Pop items from the left of queue while they fit in budget (always at least one)."""
    batch: list[T] = []
    size = 0
    while queue:
        item_cost = cost(queue[0]) + ITEM_OVERHEAD
        if batch and size + item_cost > budget:
            break
        batch.append(queue.popleft())
        size += item_cost
    return batch


# -- frames encoded by hand ------------------------------------------------------
# A frame is a protobuf message (ClientFrame, ServerFrame) written here field by field, so that a large
# payload or state is copied once, into the frame, instead of into a message, then a copy of it, then its
# serialization (upb's encoder grows its buffer as it goes: ~0.6 ms per MB here). The parser on the other
# side cannot tell the difference. tests/test_frames.py checks these tags against the .proto.

#: (field number << 3) | 2 (length-delimited) of the fields written here
CLIENT_FRAME_CALLS = b"\x0a"    # ClientFrame.calls = 1
SERVER_FRAME_REPLIES = b"\x12"  # ServerFrame.replies = 2
CALL_PAYLOAD = b"\x22"          # Call.payload = 4
REPLY_PAYLOAD = b"\x1a"         # Reply.payload = 3
REPLY_STATE = b"\x42"           # Reply.state = 8

#: a reply's payload or state this large is written beside its message, not serialized with it
LARGE = 32 * 1024


def varint(n: int) -> bytes:
    """n in protobuf's base-128 varint encoding."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def client_frame(slots: list) -> bytes:
    """The ClientFrame carrying the calls of slots (CallSlots): each call's message, then its payload parts (the
    call's own payload field stays empty: a slot's payload is the call's)."""
    parts: list = []
    for slot in slots:
        head = slot.call.SerializeToString()
        payload = slot.payload
        if payload:
            size = slot.size
            tail = varint(size)
            parts += (CLIENT_FRAME_CALLS, varint(len(head) + 1 + len(tail) + size), head, CALL_PAYLOAD, tail)
            parts += payload
        else:
            parts += (CLIENT_FRAME_CALLS, varint(len(head)), head)
    return b"".join(parts)


def server_frame(replies: list) -> bytes:
    """The ServerFrame carrying replies (Reply messages): a large payload or state goes beside its message."""
    parts: list = []
    for reply in replies:
        payload, state = reply.payload, reply.state
        if len(payload) < LARGE and len(state) < LARGE:
            head = reply.SerializeToString()
            parts += (SERVER_FRAME_REPLIES, varint(len(head)), head)
            continue
        bare = type(reply)()
        bare.CopyFrom(reply)
        bare.ClearField("payload")
        bare.ClearField("state")
        body = [bare.SerializeToString()]
        for tag, value in ((REPLY_PAYLOAD, payload), (REPLY_STATE, state)):
            if value:
                body += (tag, varint(len(value)), value)
        parts += (SERVER_FRAME_REPLIES, varint(sum(map(len, body))))
        parts += body
    return b"".join(parts)
