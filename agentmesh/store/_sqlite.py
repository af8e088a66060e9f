"""The SQLite store: one file (WAL mode) that every server of one machine shares; stdlib sqlite3 only.

A store uses one connection, one thread at a time (its lock); writers take
the file's write lock at ``BEGIN IMMEDIATE`` and wait for it up to the busy
timeout. ``synchronous=NORMAL`` by default: a committed
state survives the death of any process (it is in the WAL before the commit
returns), a power cut may lose the last commits but never corrupts the file;
``?synchronous=full`` in the URL survives a power cut too, at the cost of an
fsync per commit (measured here: 478 µs per commit against 24 µs).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from typing import Any, Iterator

from ._errors import StoreError, StoreUnavailableError
from ._schema import AGENTS, NAME_CONSTRAINT
from ._sql import DuplicateKey, SqlStore

log = logging.getLogger("agentmesh.store")

#: seconds a writer waits for another process's transaction before the store counts as unavailable
DEFAULT_BUSY_TIMEOUT = 30.0


class SqliteStore(SqlStore):
    """A state store in one SQLite file; opening it creates the file (mode 0600) and migrates its schema."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 synchronous: str = "normal") -> None:
        if synchronous.lower() not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.synchronous = synchronous.upper()
        self.url = f"sqlite://{self.path}" + ("?synchronous=full" if self.synchronous == "FULL" else "")
        self.busy_timeout = float(busy_timeout)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()   # one user of the connection at a time (SQLite has one writer anyway)
        self._closed = False
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise StoreUnavailableError(f"state store {self.url}: its directory {folder} does not exist; "
                                        f"create it (writable by the servers' user) or name another file")
        self._create_private()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _create_private(self) -> None:
        """Create the file readable by its owner only (the WAL files SQLite makes copy its mode)."""
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreUnavailableError(f"state store {self.url} cannot be created ({exc.strerror})") from None

    def _migrate(self) -> None:
        """Bring the schema up to date in one transaction; concurrent openers wait on the write lock."""
        with self._transaction() as cur:
            self._migrate_in(cur, "sqlite")

    def _connection(self) -> sqlite3.Connection:
        """The store's one connection, opened on first use; the caller holds the lock. One, not one per thread:
        commits are written from many worker threads, and each connection has its own page cache (2 MiB)."""
        if self._closed:
            raise StoreError(f"state store {self.url} is closed")
        if self._conn is not None:
            return self._conn
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"state store {self.url} cannot be opened ({exc})") from None
        try:
            with self._mapped():
                mode = self._wal(conn)
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except BaseException:
            conn.close()
            raise
        if str(mode).lower() != "wal":
            log.warning("state store %s: WAL mode refused (journal mode %s); writers will block readers",
                        self.url, mode)
        self._conn = conn
        return conn

    def _wal(self, conn: sqlite3.Connection) -> str:
        """Switch to WAL; the journal mode's change skips the busy handler when another process opening a fresh
        file changes it at the same moment ("database is locked" at once), so it is retried up to the busy
        timeout."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def size(self) -> int:
        """The file's bytes and its WAL's."""
        return sum(os.path.getsize(self.path + suffix) for suffix in ("", "-wal") if os.path.exists(self.path + suffix))

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        """sqlite3's errors as the store's: a unique violation as DuplicateKey, the rest as unavailable."""
        try:
            yield
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise StoreError(f"state store {self.url}: {exc}") from None
            raise DuplicateKey(on_name=str(exc).endswith(f"{AGENTS}.name") or NAME_CONSTRAINT in str(exc)) from None
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"state store {self.url} could not be used ({exc})") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor in a ``BEGIN IMMEDIATE`` transaction (the write lock taken at once, waited for)."""
        with self._lock:
            conn = self._connection()
            with self._mapped():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn.cursor()
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        """A cursor outside any transaction: each statement reads the last committed data. It is closed after
        use: a statement left unfinished (fetchone) would hold its read snapshot open, so later reads on this
        thread saw old data and the WAL could not be checkpointed."""
        with self._lock:
            cur = self._connection().cursor()
            try:
                with self._mapped():
                    yield cur
            finally:
                cur.close()

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
