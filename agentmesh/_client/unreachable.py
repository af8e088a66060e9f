"""Unreachable: the session a proxy holds while its agent's server cannot be reached, whose calls go to failover."""
from __future__ import annotations

from typing import Any, Sequence

import grpc
from google.protobuf.message import Message

from .. import errors
from .._loop import IoLoop
from ..v1 import agent_server_pb2 as pb
from .connection import fail
from .slot import CallOwner, CallSlot


class Unreachable:
    """A Transport to a server that could not be dialled, and why: a call submitted to it is told to its owner as
    lost (who moves the agent); nothing is ever sent, and it has no owners, calls or RPCs of its own."""

    def __init__(self, address: str, server_id: str, reason: str, loop: IoLoop, max_message_size: int) -> None:
        self.address = address
        self.server_id = server_id
        self.reason = reason
        self.epoch = 0
        self.closed = True
        self.draining = False
        self.max_message_size = max_message_size
        self._loop = loop

    def submit(self, slot: CallSlot) -> None:
        """Tell the call's owner it was lost here, on the I/O loop (the caller may hold its owner's locks)."""
        if slot.owner is not None:
            self._loop.get().call_soon_threadsafe(slot.owner.on_lost, self, [slot], self.reason)
        else:
            fail(self._loop, slot, pb.UNAVAILABLE, self._why())

    def cancel(self, slot: CallSlot) -> None:
        """Nothing was sent: nothing to cancel."""

    def attach(self, owner: CallOwner, creator: bool = False) -> None:
        """Nothing is ever told from here: its calls go to their owner as they come."""

    def detach(self, owner: CallOwner, left: bool = True) -> None:
        """Nothing to let go of."""

    def has_pending(self, owner: CallOwner) -> bool:
        """Nothing was sent: nothing pending."""
        return False

    def close_if_unused(self) -> None:
        """Never open: nothing to close."""

    async def unary(self, method: str, request: Message, *, timeout: float | None = None,
                    metadata: Sequence[tuple[str, str]] = (), what: str = "") -> Any:
        """ServerUnavailableError saying why."""
        raise errors.ServerUnavailableError(self._why())

    def stream(self, method: str, request: Message) -> grpc.aio.UnaryStreamCall:
        """ServerUnavailableError saying why."""
        raise errors.ServerUnavailableError(self._why())

    def _why(self) -> str:
        return f"agent server {self.address} cannot be reached: {self.reason}"
