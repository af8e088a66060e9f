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
