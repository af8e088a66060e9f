"""The PostgreSQL store (psycopg 3): one connection, used under a lock, re-opened after it breaks.

Meant for several machines. The password is handed to libpq as a keyword
(never in a URL or argv) and scrubbed from any error text; TCP keepalives and
a user timeout make a vanished server an error, not a hang.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Iterator, Sequence

from ._errors import StoreError, StoreUnavailableError, StoreUrlError
from ._schema import AGENTS, NAME_CONSTRAINT, PG_MIGRATION_LOCK
from ._sql import DuplicateKey, SqlStore
from ._types import Commit
from ._urls import StoreUrl, parse_store_url

log = logging.getLogger("agentmesh.store")

#: seconds to wait for a connection (libpq's connect_timeout; the URL's ``?connect_timeout=`` wins)
DEFAULT_CONNECT_TIMEOUT = 10.0
#: milliseconds sent data may stay unacknowledged before the connection counts as dead
TCP_USER_TIMEOUT_MS = 15_000


def _psycopg(url: str) -> Any:
    """The psycopg module, or a clear error saying how to install it."""
    try:
        import psycopg
    except ImportError:
        raise StoreError(f"state store {url} needs psycopg 3: pip install 'agentmesh[postgres]'") from None
    return psycopg


_UPDATE_ONE = (f"UPDATE {AGENTS} SET state = %s, seq = %s, version = version + 1, updated_at = %s "
               f"WHERE agent_id = %s AND epoch = %s AND seq <= %s RETURNING agent_id")
#: a batch in one statement whose text is the same for every batch size (arrays, not a VALUES row per commit):
#: psycopg then parses it once and PostgreSQL prepares it once; a VALUES list built per batch was parsed anew
#: by psycopg in Python each time, a fifth of a loaded server's time
_UPDATE_MANY = (f"UPDATE {AGENTS} AS a SET state = v.state, seq = v.seq, version = a.version + 1, updated_at = %s "
                f"FROM unnest(%b::bytea[], %b::bigint[], %b::text[], %b::bigint[]) AS v(state, seq, agent_id, epoch) "
                f"WHERE a.agent_id = v.agent_id AND a.epoch = v.epoch AND a.seq <= v.seq RETURNING a.agent_id")


class PostgresStore(SqlStore):
    """A state store in a PostgreSQL database; opening it connects and migrates its schema (or refuses)."""

    _mark = "%s"

    def __init__(self, url: StoreUrl | str, *, password: str | None = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        parsed = parse_store_url(url) if isinstance(url, str) else url
        if parsed.kind != "postgresql":
            raise StoreUrlError(f"state store URL {parsed.shown!r} is not a PostgreSQL URL")
        self.url = parsed.shown
        self._pg = _psycopg(self.url)
        self._parsed = parsed
        self._password = password
        self._connect_timeout = max(1, round(connect_timeout))
        self._lock = threading.RLock()
        self._conn: Any = None
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _migrate(self) -> None:
        """Bring the schema up to date in one transaction, under an advisory lock that concurrent openers share."""
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (PG_MIGRATION_LOCK,))
            self._migrate_in(cur, "postgres")

    def _connection(self) -> Any:
        """The open connection, (re)connecting first when there is none; the caller holds the lock."""
        if self._closed:
            raise StoreError(f"state store {self.url} is closed")
        if self._conn is not None and not self._conn.closed:
            return self._conn
        p = self._parsed
        options: dict[str, Any] = {"host": p.host, "port": p.port, "dbname": p.dbname,
                                   "connect_timeout": self._connect_timeout, "application_name": "agentmesh",
                                   "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3,
                                   "keepalives_count": 3, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
        if p.user:
            options["user"] = p.user
        if self._password is not None:
            options["password"] = self._password
        options.update(p.options)
        try:
            self._conn = self._pg.connect(autocommit=True, **options)
        except self._pg.Error as exc:
            hint = ""
            if "password" in str(exc) or "authentication" in str(exc):
                hint = "; check the user and the password file (AGENTMESH_STATE_STORE_PASSWORD_FILE)"
            raise StoreUnavailableError(f"state store {self.url}: cannot connect ({self._scrub(exc)}){hint}") \
                from None
        return self._conn

    def _scrub(self, exc: BaseException) -> str:
        """An error's text on one line, the password (should libpq ever echo it) masked."""
        text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        if self._password:
            text = text.replace(self._password, "***")
        return text or type(exc).__name__

    def _drop(self) -> None:
        """Forget a broken connection; the next call connects again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        """psycopg's errors as the store's: a unique violation as DuplicateKey, a lost connection as
        unavailable (and dropped), anything else as a StoreError."""
        pg = self._pg
        try:
            yield
        except pg.errors.UniqueViolation as exc:
            raise DuplicateKey(on_name=exc.diag.constraint_name == NAME_CONSTRAINT) from None
        except pg.Error as exc:
            lost = isinstance(exc, pg.OperationalError) or self._conn is None or self._conn.broken
            if lost:
                self._drop()
                raise StoreUnavailableError(f"state store {self.url} could not be used ({self._scrub(exc)})") \
                    from None
            raise StoreError(f"state store {self.url}: {self._scrub(exc)}") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor inside a transaction on the one connection, committed on exit, rolled back on an error."""
        with self._lock, self._mapped():
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                yield cur

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        """A cursor in autocommit mode: each statement reads the last committed data."""
        with self._lock, self._mapped():
            with self._connection().cursor() as cur:
                yield cur

    def commit(self, batch: Sequence[Commit]) -> set[str]:
        """One UPDATE ... FROM unnest(arrays) in autocommit: its own transaction, one round trip, so a single
        agent's commit costs one round trip and the WAL flush, not BEGIN, the update and COMMIT apart. A batch
        naming an agent twice takes the general path."""
        ids = [c.agent_id for c in batch]
        if not batch or len(set(ids)) != len(ids):
            return super().commit(batch)
        now = time.time()
        with self._read() as cur:
            if len(batch) == 1:    # the usual commit of a lone caller: the plainest statement, prepared once
                c = batch[0]
                cur.execute(_UPDATE_ONE, (bytes(c.state), c.seq, now, c.agent_id, c.epoch, c.seq))
            else:
                cur.execute(_UPDATE_MANY, (now, [bytes(c.state) for c in batch], [c.seq for c in batch], ids,
                                           [c.epoch for c in batch]))
            written = {found[0] for found in cur.fetchall()}
            missed = [c for c in batch if c.agent_id not in written]
            refused = self._refused(cur, missed) if missed else set()
        if refused:
            log.info("state store %s refused the commits of %d agent(s) from stale activations", self.url,
                     len(refused))
        return refused

    def size(self) -> int:
        """The agents table's bytes with its TOAST and indexes."""
        with self._read() as cur:
            cur.execute(f"SELECT pg_total_relation_size('{AGENTS}')")
            return int(cur.fetchone()[0])

    def _write(self, cur: Any, batch: Sequence[Commit], now: float) -> set[str]:
        """The batch's updates sent at once (one round trip, pipelined), each returning the id it wrote."""
        cur.executemany(f"UPDATE {AGENTS} SET state = %s, seq = %s, version = version + 1, updated_at = %s "
                        f"WHERE agent_id = %s AND epoch = %s AND seq <= %s RETURNING agent_id",
                        [(bytes(c.state), c.seq, now, c.agent_id, c.epoch, c.seq) for c in batch], returning=True)
        written = set()
        while True:
            written.update(found[0] for found in cur.fetchall())
            if not cur.nextset():
                break
        return self._refused(cur, [c for c in batch if c.agent_id not in written])

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            self._drop()
