"""A server's state store: durable agents are activated from it and commit their state to it before replying.

Activation (worker thread, before the constructor): the agent's row takes a
new epoch (compare-and-set in the store), and the newer of the row's state and
the creation's checkpoint is restored. After each completed call whose state
changed (its pickle differs from the last one handed to the store), the state
is queued on the CommitWriter; the call's reply is released only once the
write succeeded. A write the store refuses (a newer activation exists, or the
agent was deleted) drops this copy: its reply becomes a STALE_EPOCH refusal, so
the caller finds the agent where it lives now. Agents without a store are not
touched by any of this.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any, Callable

from .. import _checkpoint, _status
from .._config import DEFAULT_STATE_STORE_WAIT
from ..store import Commit, CommitWriter, NoSuchAgentError, Row, StateStore, StoreError
from ..v1 import agent_server_pb2 as pb
from ._host import AgentHost

log = logging.getLogger("agentmesh.server")

#: how often replies waiting on commits are checked against that bound (s)
_SWEEP_EVERY = 0.25


class Stored:
    """What a durable agent's host keeps about its row: the activation epoch, the digest of the last state
    handed to the store (an unchanged state writes nothing)."""

    __slots__ = ("epoch", "digest", "pending", "refused")

    def __init__(self, epoch: int = 0, digest: bytes = b"") -> None:
        self.epoch = epoch
        self.digest = digest
        self.pending: _Waiting | None = None   # the latest commit handed to the store, until it is settled
        self.refused = False                   # the store refused a commit: this copy is stale for good


def _digest(state: bytes) -> bytes:
    return hashlib.blake2b(state, digest_size=16).digest()


class _Waiting:
    """A reply held until its commit is written (or refused, or its wait runs out), and the replies of later
    calls that changed nothing (followers): they show the state that commit holds, so they wait for it too."""

    __slots__ = ("release", "stored", "since", "settled", "followers")

    def __init__(self, release: Callable[[bool | None], None], stored: Stored) -> None:
        self.release = release
        self.stored = stored
        self.since = time.monotonic()
        self.settled = False
        self.followers: list[Callable[[bool | None], None]] = []


class Durable:
    """The store of one server, its group-commit writer, and the replies waiting on their commits."""

    def __init__(self, store: StateStore, server_id: str, commit_wait: float = DEFAULT_STATE_STORE_WAIT) -> None:
        self.store = store
        self.server_id = server_id
        self.commit_wait = commit_wait
        self.writer = CommitWriter(store, name=f"agentmesh-store-writer-{server_id}")
        self._lock = threading.Lock()
        self._waiting: set[_Waiting] = set()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="agentmesh-store-wait", daemon=True)
        self._sweeper.start()

    # -- activation -------------------------------------------------------------------------------------------
    def activate_many(self, hosts: list[AgentHost]) -> dict[str, Row]:
        """Take the new epochs of many agents about to be built in one transaction (worker thread); their rows,
        for activate(). A store error leaves each to activate() alone."""
        try:
            return self.store.activate_many([host.agent_id for host in hosts])
        except StoreError as exc:
            log.info("state store %s: activating %d agent(s) together failed (%s); one by one", self.store.url,
                     len(hosts), exc)
            return {}

    def activate(self, host: AgentHost, state: bytes, seq: int, row: Row | None = None) -> bytes:
        """Take a new epoch for host's agent (unless row, taken by activate_many, has it) and return the state to
        build it from: the stored one when it is newer than the creation's checkpoint (state, seq). Worker
        thread; raises StoreError."""
        if row is None:
            try:
                row = self.store.activate(host.agent_id)
            except NoSuchAgentError:
                raise StoreError(f"state store {self.store.url} holds no agent {host.agent_id}: it was deleted, "
                                 f"or never made durable") from None
        if row.seq > seq and row.state:
            state, seq = row.state, row.seq
        with host.lock:
            host.seq = host.checkpoint_seq = seq
        host.stored = Stored(row.epoch, _digest(state) if state else b"")
        log.debug("agent %s activated from %s at epoch %d (seq %d)", host.agent_id, self.store.url, row.epoch, seq)
        return state

    # -- commits ----------------------------------------------------------------------------------------------
    def commit(self, host: AgentHost, call_id: str, owned: pb.Reply | None,
               release: Callable[[bool | None], None]) -> pb.Reply | None:
        """After a completed call (worker thread): queue host's state if it changed; release(True) once written,
        release(False) when refused, release(None) when the store stayed away too long. Returns None when the
        reply waits for that, or the reply to send at once instead: an error when the state cannot be pickled.
        When nothing changed, release(True) is called here."""
        stored = host.stored
        if stored.refused:        # a newer activation owns the row: nothing this copy says may go out
            release(False)
            return None
        if owned is not None and owned.state:
            state, seq = owned.state, owned.seq
        else:
            try:
                state = _checkpoint.checkpoint_of(host.agent)
            except Exception as exc:  # noqa: BLE001 - an unpicklable attribute: this call's error, not a crash
                return _status.refusal(call_id, pb.ERROR, (
                    f"agent {host.agent_id} ({host.cls_name}) is durable, but its state after this call cannot be "
                    f"pickled ({type(exc).__name__}: {exc}); the call's effects are not committed"),
                    "StateNotPicklableError")
            with host.lock:
                host.checkpoint_seq += 1
                seq = host.checkpoint_seq
        digest = _digest(state)
        if digest == stored.digest:     # nothing to write; but a reply must not show a state not yet committed
            with self._lock:
                pending = stored.pending
                if pending is not None and not pending.settled:
                    pending.followers.append(release)
                    return None
            release(True)
            return None
        stored.digest = digest
        waiting = _Waiting(release, stored)
        with self._lock:
            self._waiting.add(waiting)
            stored.pending = waiting
        self.writer.submit(Commit(host.agent_id, stored.epoch, seq, state), lambda ok: self._settle(waiting, ok),
                           inline=True)
        return None

    def _settle(self, waiting: _Waiting, ok: bool | None) -> None:
        with self._lock:
            if waiting.settled:
                return
            waiting.settled = True
            self._waiting.discard(waiting)
            if ok is False:
                waiting.stored.refused = True
        waiting.release(ok)
        for follower in waiting.followers:   # refused: they showed the refused copy's state, so they go too
            follower(ok)

    def _sweep(self) -> None:
        """Fail the replies whose commit has waited longer than commit_wait (the store is down)."""
        while not self._stop.wait(_SWEEP_EVERY):
            now = time.monotonic()
            with self._lock:
                late = [w for w in self._waiting if now - w.since > self.commit_wait]
            for waiting in late:
                self._settle(waiting, None)

    def close(self) -> None:
        """Write what is queued (bounded by the writer) and close the store."""
        self._stop.set()
        try:
            self.writer.close()
        finally:
            self.store.close()

    def live_metrics(self) -> dict[str, Any]:
        """The store's families for a scrape: commits written, transactions, refusals, failures, replies waiting."""
        w = self.writer
        return {
            "agentmesh_store_commits": ("Agent states written to the state store", "counter", [({}, float(w.commits))]),
            "agentmesh_store_transactions": ("Transactions of grouped commits", "counter",
                                             [({}, float(w.transactions))]),
            "agentmesh_store_refused": ("Commits the store refused (a newer activation, or a deleted agent)",
                                        "counter", [({}, float(w.refused))]),
            "agentmesh_store_failures": ("Attempts to write to the store that failed (retried)", "counter",
                                         [({}, float(w.failures))]),
            "agentmesh_store_waiting_replies": ("Replies held until their agent's state is committed", "gauge",
                                                [({}, float(len(self._waiting)))]),
        }
