"""Where agents' state outlives every process: the state stores (SQLite, PostgreSQL) and their group-commit writer.

One schema and one set of semantics for both stores (``StateStore``):
``create`` an agent (its name unique in its namespace), ``activate`` it
(a new epoch, compare-and-set), ``commit`` states in batches (a write from an
older epoch is refused, seq never goes backwards), ``get``, ``by_name``,
``delete``, ``list``. Stores are synchronous: call them from worker or writer
threads, never on an asyncio loop; :class:`CommitWriter` groups the commits of
many agents into few transactions on a thread of its own. :func:`open_store`
opens a store from its URL, refusing one it cannot use at once.

Modules: ``_urls`` (URLs, redaction), ``_errors``, ``_types`` (``Row``,
``Commit``, the protocol), ``_schema`` (DDL and migrations), ``_sql`` (the
semantics over SQL), ``_sqlite``, ``_postgres``, ``_writer``, ``_open``.
Whoever can write a store can run code in the servers that read it (states
are pickles): give it the trust of the namespace token.
"""
from __future__ import annotations

from ._errors import (NameTakenError, NoSuchAgentError, SchemaVersionError, StoreError, StoreUnavailableError,
                      StoreUrlError)
from ._open import open_store
from ._postgres import PostgresStore
from ._schema import MIGRATIONS, SCHEMA_VERSION, Migration
from ._sqlite import SqliteStore
from ._types import LIFETIMES, Commit, Row, StateStore
from ._urls import StoreUrl, parse_store_url, redact_store_url, store_identity
from ._writer import CommitWriter

__all__ = [
    "Commit",
    "CommitWriter",
    "LIFETIMES",
    "MIGRATIONS",
    "Migration",
    "NameTakenError",
    "NoSuchAgentError",
    "PostgresStore",
    "Row",
    "SCHEMA_VERSION",
    "SchemaVersionError",
    "SqliteStore",
    "StateStore",
    "StoreError",
    "StoreUnavailableError",
    "StoreUrl",
    "StoreUrlError",
    "open_store",
    "parse_store_url",
    "redact_store_url", "store_identity",
]
