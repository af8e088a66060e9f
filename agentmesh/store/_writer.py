"""Group commits: a thread of its own writes whatever is queued in one transaction, so a server's I/O loop and
workers never wait on the store, and a thousand agents' commits cost a few transactions, not a thousand.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from ._errors import StoreError
from ._types import Commit, StateStore

log = logging.getLogger("agentmesh.store")

Done = Callable[[bool], None]
#: the most commits written in one transaction (the rest wait for the next one)
DEFAULT_MAX_BATCH = 5000
#: retry delays while the store fails: from the first, doubled each time, up to the last
MIN_BACKOFF, MAX_BACKOFF = 0.05, 2.0


class _Queued:
    """An agent's newest commit at one epoch, and the callbacks of every submit it stands for."""

    __slots__ = ("commit", "dones", "submits")

    def __init__(self, commit: Commit, done: Optional[Done]) -> None:
        self.commit = commit
        self.dones: list[Done] = [done] if done is not None else []
        self.submits = 1


class CommitWriter:
    """Writes submitted commits to a store in groups, on a thread of its own.

    ``submit`` only queues. The thread takes what is queued (one commit per
    agent per transaction, the oldest first), writes it with
    ``store.commit`` and calls each ``done(True)`` (written) or
    ``done(False)`` (refused: a stale activation, or the agent is gone). A
    newer commit of an agent at the same epoch replaces a queued one not yet
    written (its callbacks join the newer's). When the store fails, nothing is
    dropped: the commits stay queued, in order, and are retried with a
    backoff bounded by ``max_backoff``. ``close()`` writes what is queued.
    """

    def __init__(self, store: StateStore, *, max_batch: int = DEFAULT_MAX_BATCH,
                 min_backoff: float = MIN_BACKOFF, max_backoff: float = MAX_BACKOFF,
                 name: str = "agentmesh-store-writer") -> None:
        if max_batch < 1 or min_backoff <= 0 or max_backoff < min_backoff:
            raise ValueError("max_batch must be >= 1 and 0 < min_backoff <= max_backoff")
        self.store = store
        self._max_batch = max_batch
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._cond = threading.Condition()
        self._queued: dict[tuple[str, int], _Queued] = {}
        self._outstanding = 0           # submits not yet written or refused
        self._closing = self._abandoned = False
        self._writing = False           # a transaction is being written (by the writer, or inline by a submitter)
        self._flushers = 0              # threads in flush(), waiting for every submit to be answered
        #: counters, for metrics: submits taken, rows written, submits folded into a newer one, transactions
        #: committed, commits refused, failed attempts
        self.submitted = self.commits = self.coalesced = self.transactions = self.refused = self.failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------------------------
    def submit(self, commit: Commit, done: Optional[Done] = None, inline: bool = False) -> None:
        """Queue ``commit``; ``done(bool)`` is called on the writer thread once it is written or refused.

        inline: when nothing is queued or being written, write it on the calling thread now (``done`` called
        here): a lone caller's commit skips the hop to the writer thread and back; under load commits queue
        and are grouped as before. A failed inline write is queued for the writer's retries."""
        if not isinstance(commit.state, (bytes, bytearray, memoryview)) or not isinstance(commit.seq, int) \
                or not isinstance(commit.epoch, int) or not isinstance(commit.agent_id, str):
            raise TypeError(f"a commit needs a str agent_id, int epoch and seq, and bytes state (got "
                            f"{type(commit.agent_id).__name__}, {type(commit.epoch).__name__}, "
                            f"{type(commit.seq).__name__}, {type(commit.state).__name__})")
        key = (commit.agent_id, commit.epoch)
        with self._cond:
            if self._closing:
                raise StoreError(f"the commit writer of {self.store.url} is closed")
            direct = inline and not self._queued and not self._writing
            if direct:
                self._writing = True
                self.submitted += 1
                self._outstanding += 1
        if direct:
            self._write_inline(_Queued(commit, done))
            return
        with self._cond:
            queued = self._queued.get(key)
            if queued is None:
                self._queued[key] = _Queued(commit, done)
            else:
                if commit.seq >= queued.commit.seq:
                    queued.commit = commit
                if done is not None:
                    queued.dones.append(done)
                queued.submits += 1
                self.coalesced += 1
            self.submitted += 1
            self._outstanding += 1
            self._cond.notify()

    def _write_inline(self, queued: _Queued) -> None:
        try:
            refused = self.store.commit([queued.commit])
        except Exception as exc:  # the store is down or failing: the writer retries it, in order
            if not isinstance(exc, StoreError):
                log.exception("state store %s: unexpected error writing a commit", self.store.url)
            with self._cond:
                self.failures += 1
                self._writing = False
                merged = {(queued.commit.agent_id, queued.commit.epoch): queued}
                self._merge_into(merged)
                self._cond.notify_all()
            log.warning("state store %s: cannot write a commit (%s); keeping it queued and retrying", self.store.url,
                        exc)
            return
        self._answer([queued], refused)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submit so far has been answered; whether it was within ``timeout`` s."""
        with self._cond:
            self._flushers += 1
            try:
                return self._cond.wait_for(lambda: not self._outstanding, timeout)
            finally:
                self._flushers -= 1

    def counters(self) -> dict[str, int]:
        """The counters, and how many commits are queued now."""
        with self._cond:
            return {"submitted": self.submitted, "commits": self.commits, "coalesced": self.coalesced,
                    "transactions": self.transactions, "refused": self.refused, "failures": self.failures,
                    "queued": len(self._queued)}

    def close(self, timeout: float | None = 30.0) -> int:
        """Write what is queued and stop the thread; the number of submits left unwritten (their done is never
        called) when the store still failed after ``timeout`` s."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return 0
        with self._cond:
            self._abandoned = True
            left = self._outstanding
            self._cond.notify_all()
        log.error("state store %s: %d commit(s) could not be written before the writer was closed",
                  self.store.url, left)
        return left

    # -- the writer thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:   # nothing more is written: say so loudly (replies waiting on commits time out)
            log.critical("state store %s: its commit writer stopped on an error; nothing more is committed",
                         self.store.url, exc_info=True)
            raise

    def _loop(self) -> None:
        """Take, write, answer; on a failure put the batch back in front and wait a growing delay."""
        backoff, attempts = self._min_backoff, 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: (self._queued and not self._writing) or self._closing)
                if self._abandoned or not self._queued:
                    return
                self._cond.wait_for(lambda: not self._writing or self._abandoned)   # an inline write ends first
                batch = self._take()
                self._writing = True
            try:
                refused = self.store.commit([q.commit for q in batch])
            except Exception as exc:  # the store is down or failing: keep everything, try again later
                if not isinstance(exc, StoreError):
                    log.exception("state store %s: unexpected error writing %d commit(s)", self.store.url, len(batch))
                attempts += 1
                self._put_back(batch, exc, backoff, attempts)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if attempts:
                log.warning("state store %s: writing again after %d failed attempt(s)", self.store.url, attempts)
            backoff, attempts = self._min_backoff, 0
            self._answer(batch, refused)

    def _take(self) -> list[_Queued]:
        """Up to max_batch queued commits, oldest first, one per agent (a later epoch waits its turn)."""
        batch: list[_Queued] = []
        agents: set[str] = set()
        for key, queued in list(self._queued.items()):
            if len(batch) >= self._max_batch:
                break
            if key[0] not in agents:
                agents.add(key[0])
                batch.append(self._queued.pop(key))
        return batch

    def _put_back(self, batch: list[_Queued], exc: Exception, backoff: float, attempts: int) -> None:
        """Queue a failed batch again ahead of what came since (a newer commit of the same key wins)."""
        with self._cond:
            self.failures += 1
            self._writing = False
            self._merge_into({(q.commit.agent_id, q.commit.epoch): q for q in batch})
            if attempts == 1:
                log.warning("state store %s: cannot write %d commit(s), keeping them queued and retrying: %s",
                            self.store.url, len(self._queued), exc)
            else:
                log.debug("state store %s still failing (%s); retry in %.2f s", self.store.url, exc, backoff)
            self._cond.wait_for(lambda: self._abandoned, timeout=backoff)

    def _merge_into(self, merged: dict[tuple[str, int], _Queued]) -> None:
        """Make merged (what failed) the queue, ahead of what came since; a newer commit of the same key wins.
        Under the lock."""
        for key, newer in self._queued.items():
            older = merged.get(key)
            if older is None:
                merged[key] = newer
                continue
            if newer.commit.seq >= older.commit.seq:
                older.commit = newer.commit
            older.dones.extend(newer.dones)
            older.submits += newer.submits
            self.coalesced += 1
        self._queued = merged

    def _answer(self, batch: list[_Queued], refused: set[str]) -> None:
        """Count the transaction and call every callback of the batch (outside the lock)."""
        for queued in batch:
            ok = queued.commit.agent_id not in refused
            for done in queued.dones:
                try:
                    done(ok)
                except Exception:
                    log.exception("a commit callback of agent %s failed", queued.commit.agent_id)
        with self._cond:
            self._writing = False
            self.transactions += 1
            self.refused += sum(1 for q in batch if q.commit.agent_id in refused)
            self.commits += sum(1 for q in batch if q.commit.agent_id not in refused)
            self._outstanding -= sum(q.submits for q in batch)
            # wake only whoever can go on: the writer (commits queued meanwhile), flush() (all answered), close().
            # A lone caller's inline commit wakes nobody: waking the idle writer thread for each one cost every
            # durable reply a thread switch
            if self._queued or self._closing or (self._flushers and not self._outstanding):
                self._cond.notify_all()

    def __repr__(self) -> str:
        return f"<CommitWriter {self.store.url} queued={len(self._queued)} transactions={self.transactions}>"
