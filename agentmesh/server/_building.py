"""Creations sent on sessions, built in batches: what arrives together is handed to workers together.

A failover or a burst of ``to_dist()`` sends thousands of creations at once;
building each on its own worker hand-off and task costs more than most
constructors. They are built one after another in chunks instead, and a
chunk whose constructors turn out slow passes the rest on, so a slow
constructor holds up nobody else for long.
"""
from __future__ import annotations

import time
import traceback
from typing import Any, Protocol

from .. import _status
from ..v1 import agent_server_pb2 as pb
from ._host import AgentHost, construct

#: creations received together are built by one worker in chunks of this many
CREATION_CHUNK = 256
#: a chunk whose constructors have run this long (s) hands the rest of it to another worker
SLOW_CONSTRUCTOR = 0.05


class Hosts(Protocol):
    """What building needs of the server's hosting: its workers, its loop, and what to do with the result."""

    executor: Any
    loop: Any

    def built(self, host: AgentHost, agent: Any) -> pb.CreateAgentResponse:
        """The agent serves now (I/O loop)."""

    def not_built(self, host: AgentHost, exc: BaseException, trace: str) -> Any:
        """Its constructor raised: a Refusal (I/O loop)."""


class Builds:
    """The creations waiting to be built, and the building (see the module docstring)."""

    def __init__(self, hosting: Hosts) -> None:
        self.hosting = hosting
        self._waiting: list[tuple[AgentHost, bytes, str, Any]] = []   # (agent, checkpoint, call id, outbox)
        self._scheduled = False

    def add(self, host: AgentHost, state: bytes, call_id: str, outbox: Any) -> None:
        """A creation whose checks passed (I/O loop); it is built with the others received meanwhile."""
        self._waiting.append((host, state, call_id, outbox))
        if not self._scheduled:
            self._scheduled = True
            self.hosting.loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        batch, self._waiting = self._waiting, []
        for start in range(0, len(batch), CREATION_CHUNK):
            self.hosting.executor.run(self._build, batch[start:start + CREATION_CHUNK])

    def _build(self, chunk: list) -> None:
        """Build a chunk of agents one after another (worker thread)."""
        built = []
        began = time.monotonic()
        for n, (host, state, call_id, outbox) in enumerate(chunk):
            cls, args, kwargs = host.build
            host.build = None
            try:
                built.append((host, call_id, outbox, construct(cls, host.agent_id, args, kwargs, state), None))
            except Exception as exc:  # noqa: BLE001 - the constructor raised
                built.append((host, call_id, outbox, None, (exc, traceback.format_exc())))
            if time.monotonic() - began > SLOW_CONSTRUCTOR and n + 1 < len(chunk):
                self.hosting.executor.run(self._build, chunk[n + 1:])
                break
        self.hosting.loop.call_soon_threadsafe(self._answer, built)

    def _answer(self, built: list) -> None:
        """Answer a chunk's creations and release the calls waiting for them (I/O loop)."""
        hosting = self.hosting
        for host, call_id, outbox, agent, failure in built:
            if failure is None:
                response = hosting.built(host, agent)
                reply = pb.Reply(call_id=call_id, status=pb.OK, payload=response.SerializeToString())
            else:
                refusal = hosting.not_built(host, *failure)
                reply = _status.refusal(call_id, refusal.status, refusal.message, "AgentCreationError")
            if outbox is not None:
                outbox.send(reply)
