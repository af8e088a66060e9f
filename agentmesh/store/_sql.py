"""What both stores share: the statements and semantics of the StateStore protocol over a DB-API cursor.

A subclass gives a transaction (``_transaction``), a read (``_read``) and its
placeholder style; this class does the rest, so both stores behave the same.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Sequence

from ._errors import NameTakenError, NoSuchAgentError, StoreError
from ._schema import AGENTS, COLUMNS, SCHEMA, SCHEMA_TABLE, check_version, pending
from ._types import LIFETIMES, Commit, Row

log = logging.getLogger("agentmesh.store")

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM {AGENTS}"
_LISTED = ", ".join(c for c in COLUMNS if c not in ("state", "init_args"))


class DuplicateKey(Exception):
    """Raised by a subclass's transaction for a unique violation: on the name constraint, or on the agent id."""

    def __init__(self, on_name: bool) -> None:
        super().__init__("name" if on_name else "agent_id")
        self.on_name = on_name


class SqlStore:
    """The StateStore protocol over SQL; SqliteStore and PostgresStore give it connections and transactions."""

    #: the store's URL without any secret, for messages
    url: str = ""
    #: the placeholder of the driver's parameters ("?" or "%s")
    _mark = "?"

    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A cursor inside a write transaction, committed on exit and rolled back on an exception."""
        raise NotImplementedError

    def _read(self) -> contextlib.AbstractContextManager[Any]:
        """A cursor for reads (each statement sees committed data)."""
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        """A statement written with ``?`` placeholders, in the driver's style."""
        return text if self._mark == "?" else text.replace("?", self._mark)

    def _migrate_in(self, cur: Any, dialect: str) -> None:
        """Inside the caller's transaction: make the schema table, refuse a newer schema, apply what is pending
        in dialect ("sqlite" or "postgres")."""
        cur.execute(SCHEMA_TABLE[dialect])
        cur.execute(f"SELECT COALESCE(MAX(version), 0) FROM {SCHEMA}")
        found = int(cur.fetchone()[0])
        check_version(found, self.url)
        for migration in pending(found):
            for statement in getattr(migration, dialect):
                cur.execute(statement)
            cur.execute(self._sql(f"INSERT INTO {SCHEMA} (version, applied_at) VALUES (?, ?)"),
                        (migration.version, time.time()))
            log.info("state store %s: schema migrated to version %d", self.url, migration.version)

    # -- the protocol -------------------------------------------------------------------------------------
    def create(self, agent_id: str, namespace: str, name: str | None, cls: str, lifetime: str,
               state: bytes = b"", seq: int = 0, init_args: bytes = b"") -> Row:
        """Insert a new agent at epoch 0 and version 1; NameTakenError when ``name`` lives in ``namespace``."""
        _check_new(agent_id, namespace, name, cls, lifetime, state, seq)
        row = Row(agent_id, namespace, name, cls, lifetime, bytes(state), seq, 1, 0, time.time(), bytes(init_args))
        try:
            with self._transaction() as cur:
                cur.execute(self._sql(f"INSERT INTO {AGENTS} ({', '.join(COLUMNS)}) VALUES "
                                      f"({', '.join('?' * len(COLUMNS))})"), _values(row))
        except DuplicateKey as exc:
            if exc.on_name:
                raise NameTakenError(f"state store {self.url}: an agent named {name!r} already lives in namespace "
                                     f"{namespace!r}; delete it first or choose another name",
                                     namespace, name or "") from None
            raise StoreError(f"state store {self.url}: agent {agent_id} is already stored") from None
        return row

    def activate(self, agent_id: str) -> Row:
        """Take the next epoch of the agent (epoch = epoch + 1, atomically) and return its committed row."""
        with self._transaction() as cur:
            cur.execute(self._sql(f"UPDATE {AGENTS} SET epoch = epoch + 1, updated_at = ? WHERE agent_id = ?"),
                        (time.time(), agent_id))
            if cur.rowcount == 0:
                raise NoSuchAgentError(f"state store {self.url} holds no agent {agent_id}")
            cur.execute(self._sql(f"{_SELECT} WHERE agent_id = ?"), (agent_id,))
            row = _row(cur.fetchone())
        log.debug("agent %s activated at epoch %d (seq %d)", agent_id, row.epoch, row.seq)
        return row

    def activate_many(self, agent_ids: Sequence[str]) -> dict[str, Row]:
        """activate() for many agents in one transaction: {agent_id: its row at its new epoch}; absent ids are
        left out."""
        rows: dict[str, Row] = {}
        if not agent_ids:
            return rows
        now = time.time()
        with self._transaction() as cur:
            for start in range(0, len(agent_ids), 500):
                part = list(agent_ids[start:start + 500])
                marks = ", ".join("?" * len(part))
                cur.execute(self._sql(f"UPDATE {AGENTS} SET epoch = epoch + 1, updated_at = ? "
                                      f"WHERE agent_id IN ({marks})"), (now, *part))
                cur.execute(self._sql(f"{_SELECT} WHERE agent_id IN ({marks})"), part)
                for found in cur.fetchall():
                    row = _row(found)
                    rows[row.agent_id] = row
        return rows

    def commit(self, batch: Sequence[Commit]) -> set[str]:
        """Write every commit of the batch in one transaction; the ids refused (stale epoch, or not stored)."""
        if not batch:
            return set()
        with self._transaction() as cur:
            refused = self._write(cur, batch, time.time())
        if refused:
            log.info("state store %s refused the commits of %d agent(s) from stale activations", self.url,
                     len(refused))
        return refused

    def _write(self, cur: Any, batch: Sequence[Commit], now: float) -> set[str]:
        """The batch's updates, one statement each (a subclass may send them at once)."""
        update = self._sql(f"UPDATE {AGENTS} SET state = ?, seq = ?, version = version + 1, updated_at = ? "
                           f"WHERE agent_id = ? AND epoch = ? AND seq <= ?")
        missed = []
        for c in batch:
            cur.execute(update, (bytes(c.state), c.seq, now, c.agent_id, c.epoch, c.seq))
            if cur.rowcount == 0:
                missed.append(c)
        return self._refused(cur, missed)

    def _refused(self, cur: Any, missed: Sequence[Commit]) -> set[str]:
        """Of the commits not written, those refused: the agent is gone or at another epoch (an older seq
        at the current epoch is skipped, not refused: the stored state is already newer)."""
        refused = set()
        for c in missed:
            cur.execute(self._sql(f"SELECT epoch, seq FROM {AGENTS} WHERE agent_id = ?"), (c.agent_id,))
            found = cur.fetchone()
            if found is None or found[0] != c.epoch:
                refused.add(c.agent_id)
            else:
                log.debug("commit of %s at seq %d skipped: seq %d is stored", c.agent_id, c.seq, found[1])
        return refused

    def get(self, agent_id: str) -> Row | None:
        """The stored agent, None if there is none."""
        with self._read() as cur:
            cur.execute(self._sql(f"{_SELECT} WHERE agent_id = ?"), (agent_id,))
            found = cur.fetchone()
        return None if found is None else _row(found)

    def by_name(self, namespace: str, name: str) -> Row | None:
        """The agent named ``name`` in ``namespace``, None if there is none."""
        with self._read() as cur:
            cur.execute(self._sql(f"{_SELECT} WHERE namespace = ? AND name = ?"), (namespace, name))
            found = cur.fetchone()
        return None if found is None else _row(found)

    def delete(self, agent_id: str) -> bool:
        """Remove the agent and its state (its name is free again); whether it was stored."""
        with self._transaction() as cur:
            cur.execute(self._sql(f"DELETE FROM {AGENTS} WHERE agent_id = ?"), (agent_id,))
            return cur.rowcount > 0

    def list(self, namespace: str) -> list[Row]:
        """The namespace's agents ordered by id, their ``state`` and ``init_args`` left out (``b""``)."""
        with self._read() as cur:
            cur.execute(self._sql(f"SELECT {_LISTED} FROM {AGENTS} WHERE namespace = ? ORDER BY agent_id"),
                        (namespace,))
            rows = cur.fetchall()
        return [Row(r[0], r[1], r[2], r[3], r[4], b"", int(r[5]), int(r[6]), int(r[7]), float(r[8]))
                for r in rows]

    def schema_version(self) -> int:
        """The schema version the store is at (the newest migration applied)."""
        with self._read() as cur:
            cur.execute(f"SELECT COALESCE(MAX(version), 0) FROM {SCHEMA}")
            return int(cur.fetchone()[0])

    def __enter__(self) -> "SqlStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store's connections."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def _check_new(agent_id: str, namespace: str, name: str | None, cls: str, lifetime: str, state: bytes,
               seq: int) -> None:
    """Refuse a row the schema would refuse, with a message naming the field."""
    if not agent_id or not isinstance(agent_id, str):
        raise ValueError(f"agent_id must be a non-empty string, not {agent_id!r}")
    if not isinstance(namespace, str) or not isinstance(cls, str) or not cls:
        raise ValueError(f"namespace must be a string and cls a non-empty 'module:QualName' string "
                         f"(got {namespace!r}, {cls!r})")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"name must be a non-empty string or None, not {name!r}")
    if lifetime not in LIFETIMES:
        raise ValueError(f"lifetime must be one of {', '.join(LIFETIMES)}, not {lifetime!r}")
    if not isinstance(state, (bytes, bytearray, memoryview)) or isinstance(seq, bool) or not isinstance(seq, int) \
            or seq < 0:
        raise ValueError(f"state must be bytes and seq a count of calls >= 0 (got {type(state).__name__}, {seq!r})")


def _values(row: Row) -> tuple:
    """A row's column values, in COLUMNS order."""
    return (row.agent_id, row.namespace, row.name, row.cls, row.lifetime, row.state, row.seq, row.version,
            row.epoch, row.updated_at, row.init_args)


def _row(found: Sequence[Any]) -> Row:
    """A Row from a full SELECT."""
    return Row(found[0], found[1], found[2], found[3], found[4], bytes(found[5]), int(found[6]), int(found[7]),
               int(found[8]), float(found[9]), bytes(found[10]))

