"""Failover as one operation per lost server: every agent this process owned there, moved together.

When a session ends (the server crashed, was killed, or its host vanished),
each agent that lived there joins the lost server's Evacuation. One thread
then asks the lost server once whether it is back (a blip), places all the
agents in one pass (placement's one routine: most free room first, spread
over the servers that fit), opens each target's session once, and pipelines
every agent's creation (from its last checkpoint) with its replayed calls
right behind it on that session: nobody waits for a creation to finish, and
an answer comes back as soon as its agent is built. A creation a target
refuses (full after all, class not there) falls back to the agent's own move.
What any move asks the lost server first is here too: whether it is back,
and, when it drains, to finish our calls and hand over the state.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Protocol

from .. import errors
from .._checkpoint import CheckpointStore
from .._client.slot import CallOwner, Transport
from .._runtime import Runtime
from ..v1 import agent_server_pb2 as pb
from ._creation import AgentSpec
from ._placement import place, registry_of
from ._state import Relocation

log = logging.getLogger("agentmesh.rpc")

#: how long a lost server gets to answer again before its agents move
PROBE_TIMEOUT = 0.5
#: how long a draining server gets to finish our calls before the agent moves without them
DRAIN_WAIT = 30.0


# -- asking the lost server before its agents move -----------------------------------------------------------
def same_server_again(runtime: Runtime, lost: Transport) -> Transport | None:
    """The lost server's new session, if the loss was a blip: it answers again as the same server, so it
    still holds its agents (those it dropped as moved refuse their calls, and move on their own); else None."""
    if lost.draining:
        return None
    try:
        conn = runtime.pool.connect(lost.address, timeout=PROBE_TIMEOUT, expect=lost.server_id)
    except (errors.AgentMeshError, TimeoutError, OSError):
        return None
    return conn if conn.server_id == lost.server_id else None


def finish_on(runtime: Runtime, lost: Transport, owner: CallOwner, checkpoints: CheckpointStore, label: str,
              timeout: float = DRAIN_WAIT) -> None:
    """A draining server: let owner's calls there finish, and keep the state they leave in checkpoints (asked
    of the server once when checkpoints are off); label names the agent in a warning."""
    deadline = time.monotonic() + timeout
    while lost.has_pending(owner):
        if time.monotonic() > deadline or lost.closed:
            return
        time.sleep(0.005)
    kept = checkpoints.get(owner.agent_id)
    if kept is None or not kept.state:   # checkpoints off: ask the server for the state once
        try:
            state = runtime.run(lost.unary("GetState", pb.StateRequest(agent_id=owner.agent_id), timeout=5.0))
            checkpoints.put(owner.agent_id, state.seq, state.state)
        except Exception as exc:  # noqa: BLE001 - then it restarts from its constructor
            log.warning("%s: could not fetch its state from draining %s: %s", label, lost.address, exc)


class Movable(Protocol):
    """What an evacuation needs of an agent's binding."""

    agent_id: str
    name: str
    cls_name: str
    spec: AgentSpec | None

    def land(self, conn: Transport, recreate: bool) -> int:
        """Bind to conn (re-creating the agent there first when recreate) and replay the held calls; how many."""

    def move_alone(self, lost: Transport, reason: str) -> None:
        """Move the way a single agent moves (its own thread): the fallback."""


class Evacuation:
    """The agents of one lost session, moved in one pass (see the module docstring)."""

    def __init__(self, runtime: Runtime, lost: Transport, reason: str) -> None:
        self.runtime = runtime
        self.lost = lost
        self.reason = reason
        self.members: list[Movable] = []
        self.started = False

    @staticmethod
    def join(runtime: Runtime, lost: Transport, reason: str, member: Movable) -> None:
        """member's server (session lost) is gone: move it with the others of that session (any thread)."""
        state = Relocation.of(runtime)
        with state.evacuations_lock:
            evacuation = state.evacuations.get(id(lost))
            new = evacuation is None or evacuation.started or evacuation.lost is not lost
            if new:
                evacuation = state.evacuations[id(lost)] = Evacuation(runtime, lost, reason)
            evacuation.members.append(member)
        if new:   # deferred: the connection tells every owner in one pass on the I/O loop, then this starts
            runtime.loop.get().call_soon_threadsafe(evacuation._start)

    def _start(self) -> None:
        state = Relocation.of(self.runtime)
        with state.evacuations_lock:
            self.started = True
            if state.evacuations.get(id(self.lost)) is self:
                del state.evacuations[id(self.lost)]
        threading.Thread(target=self._run, name="agentmesh-evacuation", daemon=True).start()

    # -- the one pass ------------------------------------------------------------
    def _run(self) -> None:
        lost, runtime, members = self.lost, self.runtime, self.members
        moves = Relocation.of(runtime).moves
        began = time.monotonic()
        same = same_server_again(runtime, lost)
        if same is not None:
            for member in members:
                moves.finish(lost, member, same.address, member.land(same, recreate=False),
                                     how="its server answered again")
            return
        try:
            placed, alone = self._place(members)
        except Exception as exc:  # noqa: BLE001 - then each agent tries on its own (and its calls learn why)
            log.info("evacuation of %s: placing %d agent(s) together failed (%s: %s); each moves alone",
                     lost.address, len(members), type(exc).__name__, exc)
            placed, alone = {}, list(members)
        for member in alone:
            member.move_alone(lost, self.reason)
        landed = collections.Counter()
        for conn, group in placed.items():
            for member in group:
                moves.finish(lost, member, conn.address, member.land(conn, recreate=True))
            landed[conn.address] += len(group)
        if landed:   # if the lost server was only stopped, it must drop these copies when it runs again
            runtime.pool.tell_moved(lost.server_id, lost.address,
                                    [m.agent_id for group in placed.values() for m in group])
        log.debug("evacuated %d agent(s) of %s to %s in %.2f s (%d moved alone)", sum(landed.values()),
                  lost.address, dict(landed), time.monotonic() - began, len(alone))

    def _place(self, members: list[Movable]) -> tuple[dict[Transport, list[Movable]], list[Movable]]:
        """Targets for the members that can be re-created ({connection: members}), and the others: those alike
        (registry, namespace, labels, class) are placed in one call of placement's routine."""
        placed: dict[Transport, list[Movable]] = collections.defaultdict(list)
        alone = [m for m in members if m.spec is None]     # copies of a proxy follow the registry alone
        groups: dict[tuple, list[Movable]] = collections.defaultdict(list)
        for member in members:
            if member.spec is not None:
                options = member.spec.options
                labels = tuple(sorted((options.get("labels") or {}).items()))
                groups[(*registry_of(self.runtime, options), labels, member.cls_name)].append(member)
        exclude = (self.lost.server_id, self.lost.address)
        for group in groups.values():
            targets = place(self.runtime, group[0].cls_name, group[0].spec.options, len(group), exclude=exclude)
            for member, target in zip(group, targets):
                placed[target.conn].append(member)
        return placed, alone
