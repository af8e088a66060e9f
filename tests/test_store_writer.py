"""The group-commit writer: many submits in few transactions, coalescing, fencing, and nothing lost while the
store is down (a real PostgreSQL of the test's own, shut down and started again)."""
from __future__ import annotations

import threading
from collections import defaultdict

import pytest

from agentmesh.store import Commit, CommitWriter, StoreError, open_store
from agentmesh.testing import PostgresProcess
from conftest import wait_until
from store_helpers import GatedStore, place, store  # noqa: F401  (fixtures)


class Answers:
    """The done callbacks of the submits: what each was told, thread-safely."""

    def __init__(self) -> None:
        self.told: dict[object, bool] = {}
        self._lock = threading.Lock()

    def done(self, key: object):
        def call(ok: bool) -> None:
            with self._lock:
                assert key not in self.told, f"{key} answered twice"
                self.told[key] = ok
        return call


def test_a_thousand_submits_go_in_few_transactions(place, store):
    ids = place.seed(1000)
    answers = Answers()
    writer = CommitWriter(store)
    try:
        for i, agent_id in enumerate(ids):
            writer.submit(Commit(agent_id, 1, 1, b"state %d" % i), answers.done(agent_id))
        assert writer.flush(timeout=120)
    finally:
        assert writer.close() == 0
    assert answers.told == {agent_id: True for agent_id in ids}
    counters = writer.counters()
    assert counters["commits"] == 1000 and counters["refused"] == 0 and counters["queued"] == 0
    assert counters["transactions"] < counters["commits"], counters
    assert place.execute("SELECT COUNT(*) FROM agentmesh_agents WHERE seq = 1 AND version = 2") == [(1000,)]
    assert store.get(ids[7]).state == b"state 7"


def test_newer_commits_replace_queued_ones(store):
    store.create("a", "ns", None, "m:C", "owned")
    epoch = store.activate("a").epoch
    gated = GatedStore(store)
    gated.gate.clear()
    answers = Answers()
    writer = CommitWriter(gated)
    try:
        writer.submit(Commit("a", epoch, 1, b"s1"), answers.done(1))
        assert gated.entered.wait(10)                        # s1 is in flight, held at the gate
        for seq in range(2, 11):
            writer.submit(Commit("a", epoch, seq, b"s%d" % seq), answers.done(seq))
        writer.submit(Commit("a", epoch, 4, b"late and older"), answers.done("older"))
        assert writer.counters()["queued"] == 1
        gated.gate.set()
        assert writer.flush(timeout=30)
    finally:
        writer.close()
    assert [[c.seq for c in batch] for batch in gated.batches] == [[1], [10]]
    assert answers.told == {**{seq: True for seq in range(1, 11)}, "older": True}
    counters = writer.counters()
    assert (counters["submitted"], counters["coalesced"], counters["commits"], counters["transactions"]) == \
        (11, 9, 2, 2)
    row = store.get("a")
    assert (row.seq, row.state, row.version) == (10, b"s10", 3)


def test_a_stale_activation_is_told_and_others_are_written(store):
    for agent_id in ("a", "b"):
        store.create(agent_id, "ns", None, "m:C", "owned")
    stale = store.activate("a").epoch
    store.activate("a")                                      # another server took "a" over
    eb = store.activate("b").epoch
    answers = Answers()
    writer = CommitWriter(store)
    try:
        writer.submit(Commit("a", stale, 1, b"lost"), answers.done("a"))
        writer.submit(Commit("b", eb, 1, b"kept"), answers.done("b"))
        assert writer.flush(timeout=30)
    finally:
        writer.close()
    assert answers.told == {"a": False, "b": True}
    assert writer.counters()["refused"] == 1 and store.get("a").seq == 0 and store.get("b").state == b"kept"


def test_failures_keep_commits_queued_in_order(store):
    """A store that fails for a while: retried with a backoff, every agent's commits written in order."""
    ids = [store.create(f"a{i}", "ns", None, "m:C", "owned").agent_id for i in range(5)]
    epochs = {agent_id: store.activate(agent_id).epoch for agent_id in ids}
    gated = GatedStore(store)
    gated.down = True
    answers = Answers()
    writer = CommitWriter(gated, min_backoff=0.01, max_backoff=0.05)
    try:
        for seq in range(1, 21):
            for agent_id in ids:
                writer.submit(Commit(agent_id, epochs[agent_id], seq, b"%d" % seq), answers.done((agent_id, seq)))
            if seq == 10:
                wait_until(lambda: writer.failures >= 3)
        assert not answers.told                              # nothing answered while the store is down
        gated.down = False
        assert writer.flush(timeout=30)
    finally:
        writer.close()
    assert len(answers.told) == 100 and all(answers.told.values())
    written: dict[str, list[int]] = defaultdict(list)
    for batch in gated.batches:
        for c in batch:
            written[c.agent_id].append(c.seq)
    assert all(seqs == sorted(seqs) and seqs[-1] == 20 for seqs in written.values()) and len(written) == 5
    assert all(store.get(agent_id).seq == 20 for agent_id in ids)


def test_close_writes_what_is_queued_and_then_refuses(store):
    store.create("a", "ns", None, "m:C", "owned")
    epoch = store.activate("a").epoch
    writer = CommitWriter(store)
    for seq in range(1, 51):
        writer.submit(Commit("a", epoch, seq, b"%d" % seq))
    assert writer.close() == 0
    assert store.get("a").seq == 50
    with pytest.raises(StoreError, match="closed"):
        writer.submit(Commit("a", epoch, 51, b"51"))


def test_close_gives_up_on_a_store_that_stays_down(store):
    gated = GatedStore(store)
    gated.down = True
    writer = CommitWriter(gated, min_backoff=0.01, max_backoff=0.05)
    for i in range(3):
        writer.submit(Commit(f"x{i}", 1, 1, b""))
    assert writer.close(timeout=0.5) == 3


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of the test's own, to be shut down and started again; stopped by PID at the end."""
    proc = PostgresProcess(name="agentmesh-test-postgres-outage")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def test_commits_wait_out_a_postgres_outage_and_none_is_lost(own_postgres):
    pg = own_postgres
    url = pg.create_database("outage")
    s = open_store(url, pg.password_file)
    ids = [s.create(f"a{i:02d}", "ns", f"n{i}", "m:C", "detached").agent_id for i in range(50)]
    epochs = {agent_id: s.activate(agent_id).epoch for agent_id in ids}
    answers = Answers()
    writer = CommitWriter(s, max_backoff=0.5)
    try:
        for agent_id in ids:
            writer.submit(Commit(agent_id, epochs[agent_id], 1, b"before"), answers.done((agent_id, 1)))
        assert writer.flush(timeout=60)
        pid = pg.pid
        pg.halt()                                            # the database goes away (fast shutdown, by PID)
        assert pid is not None and pg.pid is None
        for seq in (2, 3, 4):
            for agent_id in ids:
                writer.submit(Commit(agent_id, epochs[agent_id], seq, b"during %d" % seq),
                              answers.done((agent_id, seq)))
        wait_until(lambda: writer.failures >= 2, timeout=30)
        assert len(answers.told) == 50                      # the commits of the outage: kept, unanswered
        pg.start()                                           # same port, same data
        assert writer.flush(timeout=60)
    finally:
        assert writer.close(timeout=60) == 0
    assert len(answers.told) == 200 and all(answers.told.values())
    for agent_id in ids:
        row = s.get(agent_id)
        assert (row.seq, row.state) == (4, b"during 4"), row
    s.close()


def test_an_inline_commit_is_written_on_the_caller_s_thread_unless_the_writer_is_busy(store):
    """inline=True with nothing queued: written and answered on the submitting thread; while the writer holds a
    transaction, inline submits queue behind it and are written in order; a failing store queues them too."""
    store.create("a", "ns", None, "m:C", "owned")
    epoch = store.activate("a").epoch
    gated = GatedStore(store)
    writer = CommitWriter(gated, min_backoff=0.01, max_backoff=0.05)
    threads: list[str] = []
    try:
        writer.submit(Commit("a", epoch, 1, b"1"), lambda ok: threads.append(threading.current_thread().name),
                      inline=True)
        assert threads == [threading.current_thread().name] and store.get("a").seq == 1
        gated.gate.clear()                                       # the writer's next transaction waits
        writer.submit(Commit("a", epoch, 2, b"2"), lambda ok: threads.append("2"))
        assert gated.entered.wait(10)
        answers = Answers()
        for seq in (3, 4):
            writer.submit(Commit("a", epoch, seq, b"%d" % seq), answers.done(seq), inline=True)
        assert not answers.told and threads[-1] != "2"          # queued behind the transaction in flight
        gated.gate.set()
        assert writer.flush(timeout=10) and answers.told == {3: True, 4: True} and store.get("a").seq == 4
        gated.down = True
        writer.submit(Commit("a", epoch, 5, b"5"), answers.done(5), inline=True)   # fails inline: queued
        assert 5 not in answers.told and writer.failures >= 1
        gated.down = False
        assert writer.flush(timeout=10) and answers.told[5] and store.get("a").seq == 5
    finally:
        writer.close()
