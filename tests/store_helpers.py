"""Helpers of the state store tests (test_store.py, test_store_writer.py): each test's own store, of each kind.

``place`` is a fresh, empty store of one kind per parameter: a SQLite file in
the test's tmp_path, or a database of its own on the session's PostgreSQL
(the ``postgres`` fixture of conftest.py). Test modules import the fixtures
by name.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from typing import Any, Sequence

import pytest

from agentmesh.store import Commit, StateStore, StoreUnavailableError, open_store
from conftest import ROOT


@dataclasses.dataclass
class Place:
    """Where one test's store lives: its URL, the password file (PostgreSQL), raw SQL access for checks."""

    kind: str
    url: str
    password_file: str | None = None
    path: str = ""
    postgres: Any = None

    def open(self) -> StateStore:
        """Another StateStore on the same data."""
        return open_store(self.url, self.password_file)

    def execute(self, sql: str, params: Sequence[Any] = (), many: bool = False) -> list[tuple]:
        """Run SQL (``?`` placeholders) straight on the database, bypassing the store; the rows it returns."""
        if self.kind == "sqlite":
            with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as conn, conn:
                cur = conn.executemany(sql, params) if many else conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
        import psycopg

        pg = self.postgres
        with psycopg.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password,
                             dbname=self.url.rsplit("/", 1)[1], autocommit=True) as conn, conn.cursor() as cur:
            sql = sql.replace("?", "%s")
            if many:
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def seed(self, count: int, epoch: int = 1, namespace: str = "ns") -> list[str]:
        """``count`` agents inserted in one transaction (at ``epoch``, seq 0); their ids."""
        ids = [f"seed-{i:05d}" for i in range(count)]
        self.execute("INSERT INTO agentmesh_agents (agent_id, namespace, name, cls, lifetime, state, seq, version, "
                     "epoch, updated_at) VALUES (?, ?, NULL, 'm:C', 'owned', ?, 0, 1, ?, 0)",
                     [(i, namespace, b"", epoch) for i in ids], many=True)
        return ids


@pytest.fixture(params=["sqlite", "postgresql"])
def place(request, tmp_path) -> Place:
    """A fresh, empty store of each kind (its schema made by a first open)."""
    if request.param == "sqlite":
        path = str(tmp_path / "state.db")
        found = Place("sqlite", f"sqlite://{path}", path=path)
    else:
        pg = request.getfixturevalue("postgres")
        url = pg.create_database(f"t_{uuid.uuid4().hex[:12]}")
        found = Place("postgresql", url, pg.password_file, postgres=pg)
    found.open().close()
    return found


@pytest.fixture
def store(place):
    """The test's store, opened; closed afterwards."""
    opened = place.open()
    yield opened
    opened.close()


def run_python(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (the repository on its path); fail with its output if it fails."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


class GatedStore:
    """A store whose commits wait at a gate (to queue commits behind one in flight) or fail while ``down``."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.down = False
        self.batches: list[list[Commit]] = []

    def commit(self, batch: Sequence[Commit]) -> set[str]:
        self.entered.set()
        self.gate.wait(30)
        if self.down:
            raise StoreUnavailableError(f"state store {self.url} is down (test)")
        self.batches.append(list(batch))
        return self.inner.commit(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

