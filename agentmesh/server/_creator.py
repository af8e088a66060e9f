"""Creating agents: the checks, the constructors, and creations sent on sessions built in batches.

What arrives together is handed to workers together.

A failover or a burst of ``to_dist()`` sends thousands of creations at once;
building each on its own worker hand-off and task costs more than most
constructors. They are built one after another in chunks instead, and a
chunk whose constructors turn out slow passes the rest on, so a slow
constructor holds up nobody else for long.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
import traceback
from typing import Any, Callable

import grpc

from .. import _codec, _status
from ..v1 import agent_server_pb2 as pb
from ._classes import ClassNotSent, HostedClasses
from ._durable import Durable, Stored
from ._host import AgentHost, Work, construct
from ._results import ResultStore
from ._workers import Workers

log = logging.getLogger("agentmesh.server")

#: creations received together are built by one worker in chunks of this many
CREATION_CHUNK = 256
#: a chunk whose constructors have run this long (s) hands the rest of it to another worker
SLOW_CONSTRUCTOR = 0.05
#: creations refused remembered, so the calls sent behind them get the same answer
MAX_REFUSED = 10_000


class Refusal(Exception):
    """Why an agent was not created: a reply status (its gRPC code comes from the status table)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    @property
    def code(self) -> grpc.StatusCode:
        return _status.TABLE[self.status].code


class Creator:
    """Creates a server's agents and releases the calls that waited for them (I/O loop, but constructors).

    It shares the server's agents and results; ready, abandon and release_together hand waiting calls
    back to the mailboxes, added and restored report a creation.
    """

    def __init__(self, *, server_id: str, capacity: int, agents: dict[str, AgentHost], classes: HostedClasses,
                 results: ResultStore, executor: Workers, ready: Callable[[AgentHost, Work], None],
                 abandon: Callable[[AgentHost, Work, int, str], None],
                 release_together: Callable[[Callable[[], None]], None],
                 added: Callable[[AgentHost], None], restored: Callable[[], None]) -> None:
        self.server_id = server_id
        self.capacity = capacity
        self.agents = agents
        self.classes = classes
        self.results = results
        self.executor = executor
        self._ready, self._abandon, self._release_together = ready, abandon, release_together
        self._added, self._restored = added, restored
        #: agent_id -> (status, message) of creations refused (the latest MAX_REFUSED)
        self.refused: collections.OrderedDict[str, tuple[int, str]] = collections.OrderedDict()
        self.loop: asyncio.AbstractEventLoop | None = None   # the I/O loop, bound at start
        self._waiting: list[tuple[AgentHost, bytes, str, Any]] = []   # (agent, checkpoint, call id, outbox)
        self.durable: Durable | None = None   # the server's state store, when it has one
        self._scheduled = False

    def begin(self, request: pb.CreateAgentRequest, epoch: int,
              draining: bool) -> AgentHost | pb.CreateAgentResponse:
        """Check a creation and register the agent as under construction, at epoch; raises Refusal.

        Calls that arrive for it meanwhile wait in its mailbox.
        """
        agent_id = request.agent_id
        if draining:
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
        checkpoints_on = request.checkpoints_on and getattr(cls, "checkpoint", True) is not False
        if request.durable and self.durable is None:
            raise self._refuse(agent_id, pb.CREATION_FAILED, f"agent {agent_id} ({name}) is durable, but agent server "
                                                            f"{self.server_id} has no state store (--state-store)")
        host = AgentHost(agent_id, None, name, getattr(cls, "max_concurrency", 1) or 1,
                         checkpoints_on=checkpoints_on, seq=request.state_seq, epoch=epoch)
        if request.durable:
            host.stored = Stored()    # activated in the store on the worker thread, before the constructor
        host.constructed = self.loop.create_future()  # type: ignore[union-attr]
        host.build = (cls, args, kwargs)
        self.agents[agent_id] = host
        for answer in request.answered:   # others' calls its checkpoint holds: a replay is answered, not run again
            self.results.finish(answer, agent_id)
        if request.state:   # moved in from another server
            self._restored()
        return host

    async def finish(self, host: AgentHost, request: pb.CreateAgentRequest) -> pb.CreateAgentResponse:
        """Run the constructor in a worker thread; release the calls waiting for it."""
        cls, args, kwargs = host.build  # type: ignore[misc]
        host.build = None
        try:
            agent = await self.loop.run_in_executor(  # type: ignore[union-attr]
                self.executor, self._construct, host, cls, args, kwargs, request.state)
        except Exception as exc:  # noqa: BLE001 - the constructor raised
            raise self.not_built(host, exc, traceback.format_exc()) from None
        return self.built(host, agent)

    def _construct(self, host: AgentHost, cls: type, args: tuple, kwargs: dict, state: bytes,
                   row: Any = None) -> Any:
        """Build the agent (worker thread); a durable one is activated in the store first (unless row is its
        activation already taken), from the newer state."""
        if host.stored is not None:
            state = self.durable.activate(host, state, host.seq, row)  # type: ignore[union-attr]
        return construct(cls, host.agent_id, args, kwargs, state)

    def built(self, host: AgentHost, agent: Any) -> pb.CreateAgentResponse:
        """The constructor returned: the agent serves, and the calls waiting for it go on (I/O loop)."""
        host.agent = agent
        host.constructed.set_result(None)  # type: ignore[union-attr]
        host.constructed = None   # a pump already waiting holds it; nobody else needs it
        self._release_held(host, None)
        self.refused.pop(host.agent_id, None)   # an earlier refusal (class not sent) no longer answers its calls
        self._added(host)
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
        self.refused[agent_id] = (status, message)
        if len(self.refused) > MAX_REFUSED:
            self.refused.popitem(last=False)
        return Refusal(status, message)

    def created(self, host: AgentHost, existed: bool) -> pb.CreateAgentResponse:
        return pb.CreateAgentResponse(agent_id=host.agent_id, name=host.name, server_id=self.server_id,
                                      epoch=host.epoch, existed=existed)

    # -- creations sent on sessions, built in batches ----------------------------
    def from_session(self, call: pb.Call, outbox: Any, epoch: int, draining: bool) -> None:
        """A creation sent on the session stream, ahead of the agent's first calls."""
        try:
            request = pb.CreateAgentRequest.FromString(call.payload)
        except Exception as exc:  # noqa: BLE001 - a malformed protobuf
            _send(outbox, _status.refusal(call.call_id, pb.BAD_PAYLOAD, f"__create__ payload does not parse: {exc}",
                                          "DecodeError"))
            return
        try:
            begun = self.begin(request, epoch, draining)
        except Refusal as refusal:
            _send(outbox, _status.refusal(call.call_id, refusal.status, refusal.message))
            return
        if isinstance(begun, pb.CreateAgentResponse):   # its owner re-created it here (a new session)
            self.agents[request.agent_id].owner = outbox
            _send(outbox, pb.Reply(call_id=call.call_id, status=pb.OK, payload=begun.SerializeToString()))
            return
        begun.owner = outbox
        self._waiting.append((begun, request.state, call.call_id, outbox))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._start)  # type: ignore[union-attr]

    def _start(self) -> None:
        self._scheduled = False
        batch, self._waiting = self._waiting, []
        for start in range(0, len(batch), CREATION_CHUNK):
            self.executor.run(self._build, batch[start:start + CREATION_CHUNK])

    def _build(self, chunk: list, rows: dict | None = None) -> None:
        """Build a chunk of agents one after another (worker thread); its durable agents are activated first, in
        one transaction (rows: their activations, when taken already for a chunk this is the rest of)."""
        built = []
        if rows is None:
            durable = [host for host, _, _, _ in chunk if host.stored is not None and host.build is not None]
            rows = self.durable.activate_many(durable) if durable else {}  # type: ignore[union-attr]
        began = time.monotonic()
        for n, (host, state, call_id, outbox) in enumerate(chunk):
            cls, args, kwargs = host.build
            host.build = None
            try:
                built.append((host, call_id, outbox, self._construct(host, cls, args, kwargs, state,
                                                                     rows.get(host.agent_id)), None))
            except Exception as exc:  # noqa: BLE001 - the constructor raised
                built.append((host, call_id, outbox, None, (exc, traceback.format_exc())))
            if time.monotonic() - began > SLOW_CONSTRUCTOR and n + 1 < len(chunk):
                self.executor.run(functools.partial(self._build, rows=rows), chunk[n + 1:])
                break
        loop = self.loop
        assert loop is not None
        loop.call_soon_threadsafe(self._release_together, lambda: self._answer(built))

    def _answer(self, built: list) -> None:
        """Answer a chunk's creations and release the calls waiting for them (I/O loop)."""
        for host, call_id, outbox, agent, failure in built:
            if failure is None:
                response = self.built(host, agent)
                reply = pb.Reply(call_id=call_id, status=pb.OK, payload=response.SerializeToString())
            else:
                refusal = self.not_built(host, *failure)
                reply = _status.refusal(call_id, refusal.status, refusal.message, "AgentCreationError")
            _send(outbox, reply)


def _send(outbox: Any, reply: pb.Reply) -> None:
    if outbox is not None:
        outbox.send(reply)
