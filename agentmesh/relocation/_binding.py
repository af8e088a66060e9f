"""A proxy's binding to its agent's server, and the failover that moves the agent when that server is lost.

The Binding is the CallOwner of every call its proxy makes: connections tell
it of checkpoints, losses, refusals and creations. When the server dies,
hangs, is fenced or drains, the agent is re-created elsewhere with its last
checkpoint (the proxy that created it can), or found through its registry
record (a copy of a proxy), and the calls in flight are replayed there.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref

from .. import _status, errors
from .._checkpoint import Checkpoint
from .._client.connection import fail
from .._client.slot import CallSlot, Transport
from .._client.unreachable import Unreachable
from .._ids import call_order
from .._runtime import Runtime
from ..v1 import agent_server_pb2 as pb
from ._creation import AgentSpec, check_size, create_on, creation_request
from ._evacuation import Evacuation, finish_on, same_server_again
from ._placement import place
from ._state import Relocation

log = logging.getLogger("agentmesh.rpc")
#: stale-epoch refusals in a row (within STALE_WINDOW s) after which the calls fail instead of moving again
MAX_STALE = 3
STALE_WINDOW = 10.0


class Binding:
    """Where one agent lives (address, server, epoch, session) and how it moves (the CallOwner of its calls)."""

    def __init__(self, runtime: Runtime, *, agent_id: str, cls_name: str, address: str, server_id: str = "",
                 epoch: int = 0, name: str = "", spec: AgentSpec | None = None, relocatable: bool = False) -> None:
        self.runtime = runtime
        self.relocation = Relocation.of(runtime)   # the owned agents and the move log
        self.agent_id = agent_id
        self.cls_name = cls_name
        self.name = name
        self.address = address
        self.server_id = server_id
        self.epoch = epoch
        self.spec = spec                  # set on the binding of the proxy that created the agent: it can re-create it
        self.relocatable = relocatable    # placement chose the server: a refusal moves on
        self.conn: Transport | None = None
        self.creation: CallSlot | None = None   # the __create__ call while the agent is being built
        self.checkpoints = self.relocation.checkpoints   # where the creator keeps the agent's checkpoint
        if spec is not None:                     # the creator's binding: its checkpoint goes when it does
            weakref.finalize(self, self.checkpoints.delete, agent_id)
        self.held: list[CallSlot] | None = None  # calls waiting while the agent moves
        self.ended = ""                          # why the agent is gone for good (its server shut down)
        self.refused = ""                        # why it can never be created (its creation is too large)
        self._stale = (0, 0.0)                   # stale-epoch refusals in a row, and when the first came
        self._move_lock = threading.Lock()

    # -- the session ---------------------------------------------------------
    def bind(self, conn: Transport) -> None:
        old = self.conn
        self.conn = conn
        conn.attach(self, creator=self.spec is not None)   # the creator gets the checkpoints of others' calls
        if not self.server_id:         # a re-attached proxy learns its server's id, as a copy carries it
            self.server_id = conn.server_id
        if old is not None and old is not conn:
            old.detach(self)

    def session(self) -> Transport:
        """The session to send on, connecting on first use; a server that cannot be dialled leads to a move."""
        if self.ended:
            raise errors.ServerUnavailableError(self.ended)
        conn = self.conn
        if conn is None:
            try:
                conn = self.runtime.pool.connect(self.address, expect=self.server_id)
            except errors.ServerUnavailableError as exc:
                if not self.can_move():
                    raise
                conn = Unreachable(self.address, self.server_id, str(exc), self.runtime.loop,
                                   self.runtime.pool.dialing.max_message_size)
            self.bind(conn)
        return conn

    def start_creation(self, conn: Transport, spec: AgentSpec | None = None) -> None:
        """Send the creation (from spec's checkpoint, if any) ahead of the calls that follow on the same
        session (returns at once)."""
        spec = spec or self.spec
        assert spec is not None
        classes = self.runtime.classes
        ref = classes.ref(spec.cls, conn.server_id)
        request = creation_request(spec, ref)
        slot = CallSlot(pb.Call(call_id=self.runtime.next_call_id(), agent_id=self.agent_id, method="__create__"),
                        self, payload=(request.SerializeToString(),))
        self.creation = slot
        try:
            check_size(request, conn)
        except errors.MessageTooLargeError as exc:
            self._refuse(str(exc), [slot])
            return
        classes.mark_shipped(conn.server_id, ref.digest)   # the session is ordered
        conn.submit(slot)

    def send(self, slot: CallSlot, conn: Transport) -> None:
        """Send a call on conn (this binding's session), or hold it while the agent moves."""
        if self.refused:
            fail(self.runtime.loop, slot, pb.TOO_LARGE, self.refused)
        elif self.held is None or not self._hold(slot):
            conn.submit(slot)

    # -- CallOwner -------------------------------------------------------------
    def on_checkpoint(self, reply: pb.Reply) -> None:
        self.checkpoints.put(self.agent_id, reply.seq, reply.state, reply.answered)

    @property
    def checkpoint(self) -> Checkpoint:
        """The agent's latest checkpoint this process holds (empty before the first)."""
        return self.checkpoints.get(self.agent_id) or Checkpoint()

    def on_created(self, conn: Transport, reply: pb.Reply) -> None:
        response = pb.CreateAgentResponse.FromString(reply.payload)
        if conn is self.conn:
            self.epoch, self.server_id = response.epoch, response.server_id
        self.name = response.name or self.name

    def on_refused(self, conn: Transport, slot: CallSlot, reply: pb.Reply) -> bool:
        if self.spec is None:
            return False
        if reply.status in (pb.CLASS_NOT_FOUND, pb.CLASS_NOT_SENT):
            classes = self.runtime.classes
            classes.forget(conn.server_id, classes.ref(self.spec.cls, conn.server_id).digest)
        elif not (reply.status == pb.CAPACITY and self.relocatable):
            return False
        self.on_lost(conn, [slot], reply.error_message, refused=reply.status)
        return True

    def on_lost(self, conn: Transport, slots: list[CallSlot], reason: str, refused: int = 0) -> None:
        """The server behind conn is gone, hung, fenced or draining: move the agent, replay slots."""
        if self.refused:                       # never created: nothing to move
            self._refuse(self.refused, slots, again=True)
            return
        with self._move_lock:
            if self.held is not None:          # already moving: these calls go along
                self.held.extend(slots)
                return
            current = self.conn
            if current is not conn and current is not None and not current.closed:
                moved_to = current               # already moved: just send them there
            else:
                moved_to = None
                self.held = list(slots)
        if moved_to is not None:
            for slot in slots:
                moved_to.submit(slot)
            return
        if refused == pb.STALE_EPOCH and self._refused_again(conn, reason):
            return
        if not self.can_move():
            self._fail_held(f"agent server {conn.address} hosting {self._label()} was lost: {reason}")
            if conn.draining:
                self._let_go(conn)   # nothing to move: the draining server need not wait for this session
            return
        if conn.draining and not refused and not self._registry():
            self._end(conn)       # a deliberate shutdown: nowhere the registry offers, so the agent ends
            return
        if refused not in (pb.CLASS_NOT_FOUND, pb.CLASS_NOT_SENT):   # shipping the class is not a move
            self.relocation.moves.begin(conn, conn.address, reason, self.agent_id)
        if not refused and conn.closed and not conn.draining:
            Evacuation.join(self.runtime, conn, reason, self)    # a crash: moved with the server's other agents
            return
        self.move_alone(conn, reason, refused)

    def _refused_again(self, conn: Transport, reason: str) -> bool:
        """Count a stale-epoch refusal; after MAX_STALE in a row (within STALE_WINDOW s) fail the held calls
        with why instead of moving again. True when they were failed."""
        now = time.monotonic()
        count, first = self._stale
        count, first = (count + 1, first) if now - first < STALE_WINDOW else (1, now)
        self._stale = (count, first)
        if count <= MAX_STALE:
            return False
        self._stale = (0, 0.0)
        message = (f"{self._label()}: server {conn.address} refused its "
                   f"calls for a stale epoch {count} times in {now - first:.1f} s, moving did not help; last: "
                   f"{reason}")
        log.warning("%s; the call(s) fail", message)
        self._fail_held(message)
        return True

    def move_alone(self, lost: Transport, reason: str, refused: int = 0) -> None:
        """Move this agent on its own thread (a refusal, a drain, a fence, a copy of a proxy)."""
        threading.Thread(target=self._move, args=(lost, reason, refused), name="agentmesh-failover",
                         daemon=True).start()

    def land(self, conn: Transport, recreate: bool) -> int:
        """Bind to conn and replay the held calls there; with recreate, the agent's creation from its last
        checkpoint goes first on the same session (nobody waits for it). Returns the calls replayed."""
        spec = self._spec_now() if recreate else None
        with self._move_lock:   # calls made meanwhile are held (send() waits for this lock): none overtakes these
            held = self.held or []
            self.address, self.server_id = conn.address, conn.server_id
            self.bind(conn)
            if spec is not None:
                self.epoch, self.relocatable = 0, True    # the epoch comes with the creation's answer
                self.start_creation(conn, spec)
            held.sort(key=lambda slot: call_order(slot.call.call_id))
            for slot in held:
                slot.call.epoch = self.epoch
                if self.refused:     # its checkpoint made the creation too large: they fail with why
                    fail(self.runtime.loop, slot, pb.TOO_LARGE, self.refused)
                else:
                    conn.submit(slot)
            self.held = None
        if self.agent_id in self.relocation.owned:
            self.relocation.owned[self.agent_id] = conn.address
        return len(held)

    # -- moving --------------------------------------------------------------
    def can_move(self) -> bool:
        return self.spec is not None or bool(self.runtime.settings.registry)

    def _registry(self) -> str | None:
        options = self.spec.options if self.spec is not None else {}
        return options.get("registry") or self.runtime.settings.registry

    def _end(self, conn: Transport) -> None:
        """The agent's server shut down on purpose and no registry offers another: it ends with it."""
        self.ended = (f"{self._label()} ended with agent server "
                      f"{conn.address}, which was shut down; without a registry there was no server to move "
                      f"it to")
        log.info("%s", self.ended)
        self.relocation.owned.pop(self.agent_id, None)
        self._fail_held(self.ended)
        self._let_go(conn)

    def _let_go(self, conn: Transport) -> None:
        """Stop needing conn's session to a draining server: it closes once no owner, call or fetch needs it,
        so that server stops without waiting for it. A later call still goes there while it is open."""
        conn.detach(self, left=False)

    def _hold(self, slot: CallSlot) -> bool:
        with self._move_lock:
            if self.held is None:
                return False
            self.held.append(slot)
            return True

    def _refuse(self, message: str, slots: list[CallSlot], again: bool = False) -> None:
        """The agent's creation is over the message size limit, so no server can build it: slots and every
        later call fail at once with message (a MessageTooLargeError), and nothing of it is sent."""
        if not again:
            self.refused = message
            self.relocation.owned.pop(self.agent_id, None)
            log.warning("%s; nothing was sent, its calls fail", message)
        for slot in slots:
            fail(self.runtime.loop, slot, pb.TOO_LARGE, message)

    def _fail_held(self, message: str, status: int = pb.UNAVAILABLE) -> None:
        """Fail the calls held while the agent moved with message, as status's exception."""
        with self._move_lock:
            held, self.held = self.held or [], None
        for slot in held:
            fail(self.runtime.loop, slot, status, message)

    def _label(self) -> str:
        """How messages name this agent: "agent 'Writer' (module:Writer, e68d...)"."""
        return errors.agent_label(self.agent_id, self.name, self.cls_name)

    def _move(self, lost: Transport, reason: str, refused: int = 0) -> None:
        """Re-create the agent elsewhere with its last checkpoint and replay the held calls (own thread).

        refused: the server would not create the agent (full, or it could not
        load the class by reference): another server, or the same with the class by value.
        """
        start = time.monotonic()
        if refused == pb.STALE_EPOCH and self._stale[0] > 1:   # refused again soon after a move: back off
            time.sleep(min(1.0, 0.05 * 2 ** (self._stale[0] - 2)))
        try:
            if refused in (pb.CLASS_NOT_FOUND, pb.CLASS_NOT_SENT):
                target, how = self._create_again(lost), "created with its class shipped by value"
            else:
                target = None if refused else same_server_again(self.runtime, lost)
                how = "reconnected to the same server"
            if target is None:
                target, how = self._relocate(lost)
        except Exception as exc:  # noqa: BLE001 - every held call must learn why
            if isinstance(exc, errors.MessageTooLargeError):   # no server can take it: refused for good
                with self._move_lock:
                    held, self.held = self.held or [], None
                self._refuse(str(exc), held)
            elif refused in (pb.CLASS_NOT_FOUND, pb.CLASS_NOT_SENT):   # nothing was lost: it was never built
                log.info("%s could not be created: %s", self._label(), exc)   # exc names the server
                self._fail_held(str(exc), _status.creation_status(exc))
            else:
                log.info("%s: failover from %s failed: %s", self._label(), lost.address, exc)
                self._fail_held(f"{self._label()} lost with server {lost.address} ({reason}) and could not be "
                                f"moved: {exc}")
            if refused not in (pb.CLASS_NOT_FOUND, pb.CLASS_NOT_SENT):
                self.relocation.moves.finish(lost, self, None)
            if lost.draining:
                self._let_go(lost)   # nowhere to go: a later call tries again; the server need not wait for us
            return
        replayed = self.land(target, recreate=False)
        if refused in (pb.CLASS_NOT_FOUND, pb.CLASS_NOT_SENT):
            log.debug("%s: %s on %s", self._label(), how, target.address)
            return
        crash = not refused and lost.closed and not lost.draining   # summed up by one WARNING
        self.relocation.moves.finish(lost, self, target.address, replayed,
                                     how=f"{how}, in {time.monotonic() - start:.2f} s",
                                     level=logging.DEBUG if crash else logging.INFO)

    def _spec_now(self) -> AgentSpec:
        """The creation spec with the last checkpoint in it."""
        spec = self.spec
        assert spec is not None
        return AgentSpec(spec.cls, self.agent_id, spec.init_blob, spec.options, self.checkpoint)

    def _create_again(self, conn: Transport) -> Transport:
        """Create on the same server through the unary path, which ships the class by value if needed."""
        response = self.runtime.run(create_on(self.runtime, conn, self._spec_now()))
        self.epoch = response.epoch
        self.name = response.name or self.name
        return conn

    def _relocate(self, lost: Transport) -> tuple[Transport, str]:
        if self.spec is None:        # a copy of the proxy: follow the agent's record in the registry
            if lost.draining:
                self._let_go(lost)   # a copy reads nothing more from a draining server: it need not wait for us
            located = self.runtime.run(self.runtime.locate(self.agent_id, avoid=lost.address,
                                                           avoid_server=lost.server_id or self.server_id))
            if not located:
                raise errors.ServerUnavailableError(f"no registry record says where {self._label()} went")
            conn = self.runtime.pool.connect(located[1], expect=located[0])
            self.epoch = 0
            return conn, "found in the registry"
        if lost.draining and not lost.closed:
            finish_on(self.runtime, lost, self, self.checkpoints, self._label())
        spec = self._spec_now()
        placed = place(self.runtime, self.cls_name, spec.options, exclude=(lost.server_id, lost.address),
                       specs=[spec])[0]
        self.epoch = placed.response.epoch
        return placed.conn, (f"re-created from its checkpoint after call {spec.resume.seq}" if spec.resume.state
                             else "re-created from its constructor arguments")
