"""The state stores: one schema and the same semantics on SQLite and on a real PostgreSQL; URLs refused clearly.

Each test of a store runs on both kinds (``place``/``store`` from
store_helpers.py): a SQLite file in tmp_path, a database of its own on the
session's PostgreSQL. Other processes are real subprocesses.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import traceback
import uuid

import pytest

from agentmesh.errors import AgentMeshError
from agentmesh.store import (SCHEMA_VERSION, Commit, NameTakenError, NoSuchAgentError, PostgresStore, Row,
                             SchemaVersionError, SqliteStore, StoreError, StoreUnavailableError, StoreUrlError,
                             open_store, store_identity)
from agentmesh.testing import free_port
from conftest import ROOT
from store_helpers import place, run_python, store  # noqa: F401  (fixtures)

SECRET = "Sup3r-secret_pw"


def test_the_schema_is_made_once_and_versioned(place):
    applied = [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert place.execute("SELECT version FROM agentmesh_schema ORDER BY version") == applied
    again = place.open()                                    # a second open migrates nothing
    try:
        assert again.schema_version() == SCHEMA_VERSION
    finally:
        again.close()
    assert place.execute("SELECT version FROM agentmesh_schema ORDER BY version") == applied
    assert isinstance(again, SqliteStore if place.kind == "sqlite" else PostgresStore)


def test_a_schema_newer_than_the_code_is_refused(place):
    place.execute("INSERT INTO agentmesh_schema (version, applied_at) VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError) as err:
        place.open()
    text = str(err.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in text and f"({SCHEMA_VERSION})" in text
    assert "upgrade agentmesh" in text


def test_create_names_and_delete(store):
    row = store.create("a1", "ns", "planner", "mod:Planner", "detached", b"s0", 0)
    assert row == store.get("a1") and isinstance(row, Row)
    assert (row.name, row.lifetime, row.state, row.seq, row.version, row.epoch) == \
        ("planner", "detached", b"s0", 0, 1, 0)
    with pytest.raises(NameTakenError) as err:
        store.create("a2", "ns", "planner", "mod:Other", "owned")
    assert (err.value.namespace, err.value.name) == ("ns", "planner") and "'planner'" in str(err.value)
    assert isinstance(err.value, AgentMeshError)
    assert store.get("a2") is None                           # the refused insert left nothing
    store.create("a3", "other-ns", "planner", "mod:Planner", "owned")   # a name is unique per namespace
    store.create("a4", "ns", None, "mod:Anon", "owned")      # unnamed agents never clash
    store.create("a5", "ns", None, "mod:Anon", "owned")
    with pytest.raises(StoreError) as dup:
        store.create("a1", "ns", "another", "mod:Planner", "owned")
    assert not isinstance(dup.value, NameTakenError) and "a1" in str(dup.value)
    assert store.by_name("ns", "planner").agent_id == "a1"
    assert store.by_name("other-ns", "planner").agent_id == "a3"
    assert store.by_name("ns", "nobody") is None
    assert store.delete("a1") is True and store.delete("a1") is False
    assert store.get("a1") is None and store.by_name("ns", "planner") is None
    assert store.create("a6", "ns", "planner", "mod:Planner", "owned").name == "planner"   # the name is free again
    with pytest.raises(ValueError, match="lifetime"):
        store.create("a7", "ns", None, "mod:C", "forever")


def test_list_gives_a_namespace_without_state(store):
    for agent_id in ("b", "a", "c"):
        store.create(agent_id, "ns", agent_id.upper(), "mod:C", "owned", b"x" * 100)
    store.create("z", "elsewhere", None, "mod:C", "owned", b"y")
    rows = store.list("ns")
    assert [r.agent_id for r in rows] == ["a", "b", "c"]
    assert all(r.state == b"" and r.namespace == "ns" and r.version == 1 for r in rows)
    assert store.list("empty") == []


def test_many_agents_are_activated_in_one_transaction(place, store):
    ids = place.seed(1200, epoch=3)
    store.create("named", "ns", "n", "mod:C", "detached", b"st", 4, init_args=b"args")
    rows = store.activate_many([*ids, "named", "missing"])
    assert len(rows) == 1201 and "missing" not in rows
    assert {r.epoch for aid, r in rows.items() if aid != "named"} == {4}
    assert (rows["named"].epoch, rows["named"].state, rows["named"].seq, rows["named"].init_args) == (1, b"st", 4,
                                                                                                      b"args")
    assert store.get(ids[-1]).epoch == 4 and store.activate_many([]) == {}


def test_activate_takes_a_new_epoch_each_time(place, store):
    store.create("a", "ns", None, "mod:C", "owned", b"state", 7)
    first = store.activate("a")
    assert (first.epoch, first.state, first.seq) == (1, b"state", 7)
    assert store.activate("a").epoch == 2
    with pytest.raises(NoSuchAgentError):
        store.activate("missing")
    other = place.open()                                     # two "servers" activating at once: all epochs distinct
    epochs: list[int] = []

    def activate_many(s) -> None:
        for _ in range(10):
            epochs.append(s.activate("a").epoch)

    threads = [threading.Thread(target=activate_many, args=(s,)) for s in (store, other)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        other.close()
    assert sorted(epochs) == list(range(3, 23))
    assert store.get("a").epoch == 22


def test_a_stale_activation_is_fenced_and_seq_never_goes_back(store):
    store.create("a", "ns", "n", "mod:C", "owned", b"s0", 0)
    old = store.activate("a").epoch                         # server 1
    new = store.activate("a").epoch                         # server 2 takes over
    assert store.commit([Commit("a", old, 5, b"from the old one")]) == {"a"}
    row = store.get("a")
    assert (row.state, row.seq, row.version, row.epoch) == (b"s0", 0, 1, new)   # unchanged
    assert store.commit([Commit("a", new, 3, b"s3")]) == set()
    assert store.commit([Commit("a", new, 2, b"older")]) == set()     # skipped: seq 3 is stored, not a refusal
    row = store.get("a")
    assert (row.state, row.seq, row.version) == (b"s3", 3, 2)
    assert store.commit([Commit("a", new, 3, b"s3 again")]) == set()  # the same seq again (a retry) is written
    assert store.get("a").version == 3
    assert store.commit([Commit("gone", 1, 1, b"x")]) == {"gone"}     # an agent no longer stored is refused
    store.create("b", "ns", None, "mod:C", "owned")
    eb = store.activate("b").epoch
    assert store.commit([Commit("a", old, 9, b"stale"), Commit("b", eb, 1, b"b1")]) == {"a"}  # one transaction
    assert store.get("b").state == b"b1" and store.get("a").seq == 3
    assert store.commit([]) == set()


CHILD = """
import json, sys
from agentmesh.store import Commit, open_store
store = open_store(sys.argv[1], sys.argv[2] or None)
row = store.by_name("ns", "shared")
assert store.commit([Commit(row.agent_id, row.epoch, row.seq + 1, b"from the child")]) == set()
print(json.dumps({"id": row.agent_id, "seq": row.seq, "state": row.state.decode(), "epoch": row.epoch}))
store.close()
"""


def test_another_process_sees_and_writes_the_same_rows(place, store):
    store.create("s1", "ns", "shared", "mod:C", "detached", b"from the parent", 4)
    epoch = store.activate("s1").epoch
    out = run_python(CHILD, place.url, place.password_file or "")
    assert json.loads(out.stdout) == {"id": "s1", "seq": 4, "state": "from the parent", "epoch": epoch}
    row = store.get("s1")
    assert (row.state, row.seq, row.version) == (b"from the child", 5, 2)


OPENER = """
import sys
from agentmesh.store import open_store
print("ready", flush=True)
sys.stdin.readline()
store = open_store(sys.argv[1], sys.argv[2] or None)
print(store.schema_version(), flush=True)
store.close()
"""


def test_a_store_of_schema_1_is_migrated_and_its_rows_stay_readable(place):
    """A store written by the first schema (no constructor arguments) is brought up to date on open, and its
    rows read as they were, with empty constructor arguments."""
    from agentmesh.store import MIGRATIONS

    place.execute("DROP TABLE agentmesh_agents")
    place.execute("DELETE FROM agentmesh_schema")
    statements = MIGRATIONS[0].sqlite if place.kind == "sqlite" else MIGRATIONS[0].postgres
    for statement in statements:
        place.execute(statement)
    place.execute("INSERT INTO agentmesh_schema (version, applied_at) VALUES (1, 0)")
    place.execute("INSERT INTO agentmesh_agents (agent_id, namespace, name, cls, lifetime, state, seq, version, "
                  "epoch, updated_at) VALUES ('old', 'ns', 'veteran', 'm:C', 'detached', ?, 7, 8, 3, 0)", (b"st",))
    store = place.open()
    try:
        assert store.schema_version() == SCHEMA_VERSION
        row = store.by_name("ns", "veteran")
        assert (row.agent_id, row.state, row.seq, row.epoch, row.init_args) == ("old", b"st", 7, 3, b"")
        made = store.create("new", "ns", "rookie", "m:C", "owned", init_args=b"args")
        assert store.get("new").init_args == b"args" == made.init_args
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_processes_opening_a_fresh_store_at_once_migrate_it_once(kind, tmp_path, request):
    """Three processes open a store that has no schema yet, released together: one migrates, all succeed."""
    url, password_file = f"sqlite://{tmp_path}/fresh.db", ""
    if kind == "postgresql":
        pg = request.getfixturevalue("postgres")
        url, password_file = pg.create_database(f"fresh_{uuid.uuid4().hex[:12]}"), pg.password_file
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, url, password_file], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for _ in range(3)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0 and out.strip() == str(SCHEMA_VERSION), err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    check = open_store(url, password_file or None)
    try:
        assert check.schema_version() == SCHEMA_VERSION and check.list("ns") == []
    finally:
        check.close()


def test_urls_are_checked_and_a_password_in_one_is_refused_unseen(caplog):
    caplog.set_level(logging.DEBUG)
    for url in (f"postgresql://agent:{SECRET}@db:5432/agentmesh", f"postgres://agent:{SECRET}@db/agentmesh",
                f"postgresql://agent@db/agentmesh?password={SECRET}", f"postgresql://agent:{SECRET}/x@db/agentmesh"):
        with pytest.raises(StoreUrlError) as err:
            open_store(url)
        shown = "".join(traceback.format_exception(err.value))
        assert SECRET not in shown and "carries a password" in str(err.value)
        assert "AGENTMESH_STATE_STORE_PASSWORD_FILE" in str(err.value)
    assert SECRET not in caplog.text
    with pytest.raises(StoreUrlError, match="unknown kind 'mysql'"):
        open_store("mysql://db/agentmesh")
    with pytest.raises(StoreUrlError, match="names no database"):
        open_store("postgresql://agent@db")
    with pytest.raises(StoreUrlError, match="names no database file"):
        open_store("sqlite://")
    with pytest.raises(StoreUrlError, match="no host"):
        open_store("sqlite://somehost/state.db")
    with pytest.raises(StoreUrlError, match="unknown option"):
        open_store("postgresql://agent@db/agentmesh?options=-c%20x")


def test_sqlite_paths_and_unusable_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:sub.db")                   # relative: from the current directory
    try:
        assert relative.url == f"sqlite://{tmp_path}/sub.db" and (tmp_path / "sub.db").stat().st_mode & 0o077 == 0
    finally:
        relative.close()
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        open_store(f"sqlite://{tmp_path}/no/such/dir/state.db")
    (tmp_path / "junk.db").write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(StoreUnavailableError, match="junk.db"):
        open_store(f"sqlite://{tmp_path}/junk.db")
    with pytest.raises(StoreUrlError, match="no password"):
        open_store(f"sqlite://{tmp_path}/x.db", password_file=str(tmp_path / "pw"))


def test_an_unreachable_or_unauthorised_postgres_is_refused_at_open(postgres, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = tmp_path / "wrong"
    wrong.write_text(SECRET + "\n")
    wrong.chmod(0o600)
    with pytest.raises(StoreUnavailableError) as err:
        open_store(postgres.url(), password_file=str(wrong))
    text = "".join(traceback.format_exception(err.value))
    assert "password authentication failed" in text and postgres.url() in text and SECRET not in text
    port = free_port()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}/agentmesh.*cannot connect"):
        open_store(f"postgresql://agent@127.0.0.1:{port}/agentmesh", password_file=str(wrong), connect_timeout=2)
    with pytest.raises(StoreUnavailableError, match='"nosuchdb" does not exist'):
        open_store(postgres.url("nosuchdb"), password_file=postgres.password_file)
    with pytest.raises(StoreUrlError, match="cannot be read"):
        open_store(postgres.url(), password_file=str(tmp_path / "missing"))
    env = {"AGENTMESH_STATE_STORE_PASSWORD_FILE": postgres.password_file}
    good = open_store(postgres.url(), environ=env)            # the password file named by the variable
    good.close()
    assert SECRET not in caplog.text and postgres.password not in caplog.text
    with pytest.raises(StoreError, match="closed"):
        good.get("x")


def test_a_sqlite_url_may_choose_full_synchronous_commits(tmp_path):
    from agentmesh.store import StoreUrlError, parse_store_url

    assert parse_store_url(f"sqlite://{tmp_path}/a.db").options == ()
    full = open_store(f"sqlite://{tmp_path}/a.db?synchronous=FULL")
    try:
        assert full.url.endswith("?synchronous=full")
        assert full._connection().execute("PRAGMA synchronous").fetchone()[0] == 2     # FULL
    finally:
        full.close()
    normal = open_store(f"sqlite://{tmp_path}/a.db")
    try:
        assert normal._connection().execute("PRAGMA synchronous").fetchone()[0] == 1   # NORMAL
    finally:
        normal.close()
    for bad in ("?synchronous=off", "?cache=shared", "#frag"):
        with pytest.raises(StoreUrlError, match="synchronous|fragment"):
            parse_store_url(f"sqlite://{tmp_path}/a.db{bad}")


def test_reads_on_one_thread_see_every_later_commit(place, store):
    """A read left unfinished must not pin a snapshot: the same thread's next read sees a newer commit."""
    store.create("r", "ns", "n", "mod:C", "detached")
    epoch = store.activate("r").epoch
    writer = place.open()
    try:
        for seq in range(1, 6):
            writer.commit([Commit("r", epoch, seq, b"s%d" % seq)])
            assert store.get("r").seq == seq and store.by_name("ns", "n").state == b"s%d" % seq
    finally:
        writer.close()


def test_a_store_says_its_size_on_disk(place, store):
    before = store.size()
    store.create("big", "ns", None, "m:C", "owned", state=bytes(range(256)) * 800)
    assert before > 0 and store.size() >= before


def test_a_stores_identity_is_the_same_from_every_url_that_reaches_it(tmp_path, monkeypatch):
    """What servers publish so durable agents are placed only where their rows are: one file (however it is
    written) or one PostgreSQL database (whichever user) is one identity; another file or database is not."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    same = {store_identity(u) for u in (f"sqlite://{tmp_path}/sub/s.db", "sqlite:sub/s.db", "sqlite:link/s.db",
                                        f"sqlite:///{tmp_path}/sub/../sub/s.db")}
    assert len(same) == 1 and "" not in same
    assert store_identity(f"sqlite://{tmp_path}/sub/t.db") not in same
    pg = store_identity("postgresql://agent@DB.example:5432/state")
    assert pg == store_identity("postgresql://other@db.example/state?sslmode=require")
    assert pg not in {store_identity("postgresql://agent@db.example:5433/state"),
                      store_identity("postgresql://agent@db.example/state2")}
    assert len(pg) == 16 and "db.example" not in pg
    assert store_identity(None) == store_identity("") == store_identity("redis://x") == ""
