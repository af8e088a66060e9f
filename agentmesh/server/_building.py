"""Creating agents: the checks, and creations sent on sessions built in batches.

What arrives together is handed to workers together.

A failover or a burst of ``to_dist()`` sends thousands of creations at once;
building each on its own worker hand-off and task costs more than most
constructors. They are built one after another in chunks instead, and a
chunk whose constructors turn out slow passes the rest on, so a slow
constructor holds up nobody else for long.
"""
from __future__ import annotations

import collections
import logging
import time
import traceback
from typing import Any

import grpc

from .. import _codec, _status
from ..v1 import agent_server_pb2 as pb
from ._classes import ClassNotSent
from ._host import AgentHost, construct

log = logging.getLogger("agentmesh.server")

#: creations received together are built by one worker in chunks of this many
CREATION_CHUNK = 256
#: a chunk whose constructors have run this long (s) hands the rest of it to another worker
SLOW_CONSTRUCTOR = 0.05


class Refusal(Exception):
    """Why an agent was not created: a reply status (its gRPC code comes from the status table)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    @property
    def code(self) -> grpc.StatusCode:
        return _status.TABLE[self.status].code


class Creating:
    """Creating agents, mixed into the server's Hosting: the checks, the constructor, the release of the
    calls that waited for it (I/O loop, except the constructors)."""

    server_id: str
    epoch: int
    capacity: int
    draining: bool
    agents: dict[str, AgentHost]
    classes: Any
    listener: Any
    executor: Any
    loop: Any
    _failed: collections.OrderedDict[str, tuple[int, str]]
    metrics: Any
    results: Any
    builds: "Builds"

    def _answer(self, outbox: Any, reply: pb.Reply) -> None:
        raise NotImplementedError   # implemented by Hosting, which this is mixed into

    def _ready(self, host: AgentHost, work: Any) -> None:
        raise NotImplementedError   # implemented by Hosting, which this is mixed into

    def _abandon(self, host: AgentHost, work: Any, status: int, message: str) -> None:
        raise NotImplementedError   # implemented by Hosting, which this is mixed into

    def release_together(self, fn: Any) -> None:
        raise NotImplementedError   # implemented by Hosting, which this is mixed into

    def begin_create(self, request: pb.CreateAgentRequest) -> AgentHost | pb.CreateAgentResponse:
        """Check a creation and register the agent as under construction; raises Refusal.

        Calls that arrive for it meanwhile wait in its mailbox.
        """
        agent_id = request.agent_id
        if self.draining:
            raise Refusal(pb.UNAVAILABLE, f"agent server {self.server_id} is draining")
        existing = self.agents.get(agent_id)
        if existing is not None:
            return self.created(existing, existed=True)
        if not agent_id:
            raise Refusal(pb.BAD_PAYLOAD, "agent_id is empty")
        if len(self.agents) >= self.capacity:
            raise self._refuse(agent_id, pb.CAPACITY, f"agent server {self.server_id} is full: "
                                                     f"capacity {self.capacity} agents")
        name = request.cls.name
        try:
            cls = self.classes.resolve(request.cls)
        except ClassNotSent as exc:   # calls sent behind it get the same answer, so the client replays them
            raise self._refuse(agent_id, pb.CLASS_NOT_SENT, f"class {name}: {exc}") from None
        except LookupError as exc:
            raise self._refuse(agent_id, pb.CLASS_NOT_FOUND, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - a class that cannot be loaded here
            raise self._refuse(agent_id, pb.CLASS_NOT_FOUND, f"class {name} cannot be loaded on this server: "
                                                            f"{type(exc).__name__}: {exc}") from None
        try:
            args, kwargs = _codec.loads(request.init_args) if request.init_args else ((), {})
        except Exception as exc:  # noqa: BLE001
            raise self._refuse(agent_id, pb.BAD_PAYLOAD, f"constructor arguments of {name} do not unpickle: "
                                                        f"{type(exc).__name__}: {exc}") from None
        checkpoint = request.checkpoint and getattr(cls, "checkpoint", True) is not False
        host = AgentHost(agent_id, None, name, getattr(cls, "max_concurrency", 1) or 1,
                         checkpoint=checkpoint, seq=request.state_seq, epoch=self.epoch)
        host.constructed = self.loop.create_future()  # type: ignore[union-attr]
        host.build = (cls, args, kwargs)
        self.agents[agent_id] = host
        for answer in request.answered:   # others' calls its checkpoint holds: a replay is answered, not run again
            self.results.finish(answer, agent_id)
        if request.state and self.metrics is not None:   # moved in from another server
            self.metrics.restored += 1
        return host

    async def finish_create(self, host: AgentHost, request: pb.CreateAgentRequest) -> pb.CreateAgentResponse:
        """Run the constructor in a worker thread; release the calls waiting for it."""
        cls, args, kwargs = host.build  # type: ignore[misc]
        host.build = None
        try:
            agent = await self.loop.run_in_executor(  # type: ignore[union-attr]
                self.executor, construct, cls, host.agent_id, args, kwargs, request.state)
        except Exception as exc:  # noqa: BLE001 - the constructor raised
            raise self.not_built(host, exc, traceback.format_exc()) from None
        return self.built(host, agent)

    def built(self, host: AgentHost, agent: Any) -> pb.CreateAgentResponse:
        """The constructor returned: the agent serves, and the calls waiting for it go on (I/O loop)."""
        host.agent = agent
        host.constructed.set_result(None)  # type: ignore[union-attr]
        host.constructed = None   # a pump already waiting holds it; nobody else needs it
        self._release_held(host, None)
        self._failed.pop(host.agent_id, None)   # an earlier refusal (class not sent) no longer answers its calls
        if self.listener is not None:
            self.listener.agent_added(host.agent_id, host.name, host.cls_name)
        log.debug("created agent %s (%s)", host.agent_id, host.cls_name)
        return self.created(host, existed=False)

    def not_built(self, host: AgentHost, exc: BaseException, trace: str) -> Refusal:
        """The constructor raised: the agent is dropped and the calls waiting for it get the error (I/O loop)."""
        if self.agents.get(host.agent_id) is host:
            del self.agents[host.agent_id]
        refusal = self._refuse(host.agent_id, pb.CREATION_FAILED,
                               f"{host.cls_name}({host.agent_id}) raised in its constructor: "
                               f"{type(exc).__name__}: {exc}\n{trace}")
        host.constructed.set_exception(refusal)  # type: ignore[union-attr]
        host.constructed.exception()   # type: ignore[union-attr]  # retrieved: the pump reads it too
        self._release_held(host, refusal)
        return refusal

    def _release_held(self, host: AgentHost, refusal: Refusal | None) -> None:
        """Calls that waited for the build only (no pump: nothing to resolve) run now, or get the refusal."""
        if host.waiting and host.pump is None:
            waiting, host.waiting = host.waiting, None
            for work in waiting:
                if refusal is None:
                    self._ready(host, work)
                else:
                    self._abandon(host, work, refusal.status, refusal.message)

    def _refuse(self, agent_id: str, status: int, message: str) -> Refusal:
        """Remember why agent_id was not created, so calls sent behind its creation get the same answer."""
        self._failed[agent_id] = (status, message)
        if len(self._failed) > 10_000:
            self._failed.popitem(last=False)
        return Refusal(status, message)

    def create_from_session(self, call: pb.Call, outbox: Any) -> None:
        """A creation sent on the session stream, ahead of the agent's first calls."""
        try:
            request = pb.CreateAgentRequest.FromString(call.payload)
        except Exception as exc:  # noqa: BLE001 - a malformed protobuf
            self._answer(outbox, _status.refusal(call.call_id, pb.BAD_PAYLOAD,
                                                 f"__create__ payload does not parse: {exc}", "DecodeError"))
            return
        try:
            begun = self.begin_create(request)
        except Refusal as refusal:
            self._answer(outbox, _status.refusal(call.call_id, refusal.status, refusal.message))
            return
        if isinstance(begun, pb.CreateAgentResponse):   # its owner re-created it here (a new session)
            self.agents[request.agent_id].owner = outbox
            self._answer(outbox, pb.Reply(call_id=call.call_id, status=pb.OK, payload=begun.SerializeToString()))
            return
        begun.owner = outbox
        self.builds.add(begun, request.state, call.call_id, outbox)

    def created(self, host: AgentHost, existed: bool) -> pb.CreateAgentResponse:
        return pb.CreateAgentResponse(agent_id=host.agent_id, name=host.name, server_id=self.server_id,
                                      epoch=host.epoch, existed=existed)

class Builds:
    """The creations waiting to be built, and the building (see the module docstring)."""

    def __init__(self, hosting: Creating) -> None:
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
        self.hosting.release_together(lambda: self._answer_all(built))

    def _answer_all(self, built: list) -> None:
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
