"""The one schema of both stores and its migrations: version n's statements take a store from n-1 to n.

A migration is only ever appended, never edited: old records stay readable
because every store at version n has had exactly migrations 1..n applied.
"""
from __future__ import annotations

import dataclasses

from ._errors import SchemaVersionError

AGENTS = "agentmesh_agents"
SCHEMA = "agentmesh_schema"
#: the UNIQUE (namespace, name) constraint: its violation means "name taken"
NAME_CONSTRAINT = "agentmesh_agents_name"
#: the columns of a Row, in its field order
COLUMNS = ("agent_id", "namespace", "name", "cls", "lifetime", "state", "seq", "version", "epoch", "updated_at",
           "init_args")
#: PostgreSQL's advisory lock key held while migrating ("agentmsh" in ASCII)
PG_MIGRATION_LOCK = 0x6167656E746D7368


@dataclasses.dataclass(frozen=True)
class Migration:
    """The statements that take a store from ``version - 1`` to ``version``, in each dialect."""

    version: int
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


def _agents_table(text: str, blob: str, integer: str, real: str) -> str:
    """The agents table of schema version 1, in one dialect's types."""
    return f"""CREATE TABLE {AGENTS} (
    agent_id   {text} PRIMARY KEY,
    namespace  {text} NOT NULL,
    name       {text},
    cls        {text} NOT NULL,
    lifetime   {text} NOT NULL CHECK (lifetime IN ('owned', 'detached')),
    state      {blob} NOT NULL,
    seq        {integer} NOT NULL CHECK (seq >= 0),
    version    {integer} NOT NULL,
    epoch      {integer} NOT NULL,
    updated_at {real} NOT NULL,
    CONSTRAINT {NAME_CONSTRAINT} UNIQUE (namespace, name)
)"""


#: the schema-version table, made before any migration runs (one row per applied migration)
SCHEMA_TABLE = {
    "sqlite": f"CREATE TABLE IF NOT EXISTS {SCHEMA} (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)",
    "postgres": f"CREATE TABLE IF NOT EXISTS {SCHEMA} (version INTEGER PRIMARY KEY, "
                f"applied_at DOUBLE PRECISION NOT NULL)",
}

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1,
              sqlite=(_agents_table("TEXT", "BLOB", "INTEGER", "REAL"),),
              postgres=(_agents_table("TEXT", "BYTEA", "BIGINT", "DOUBLE PRECISION"),)),
    # 2: the constructor arguments (a pickle of (args, kwargs)): any process can build the agent again
    Migration(2,
              sqlite=(f"ALTER TABLE {AGENTS} ADD COLUMN init_args BLOB NOT NULL DEFAULT x''",),
              postgres=(f"ALTER TABLE {AGENTS} ADD COLUMN init_args BYTEA NOT NULL DEFAULT ''::bytea",)),
)
#: the newest schema this code knows
SCHEMA_VERSION = MIGRATIONS[-1].version


def check_version(found: int, url: str) -> None:
    """Refuse a store whose schema a later agentmesh wrote: this code could misread its rows."""
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(f"state store {url} has schema version {found}, newer than this agentmesh knows "
                                 f"({SCHEMA_VERSION}); upgrade agentmesh on this machine to use it")


def pending(found: int) -> list[Migration]:
    """The migrations a store at version ``found`` still needs, in order."""
    return [m for m in MIGRATIONS if m.version > found]
