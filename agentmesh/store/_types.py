"""What a state store holds and is asked: a stored agent (Row), a state to write (Commit), the StateStore protocol."""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

#: an owned agent ends with the process that created it; a detached one lives until it is deleted
LIFETIMES = ("owned", "detached")


@dataclasses.dataclass(frozen=True)
class Row:
    """One stored agent: who it is, its state after ``seq`` completed calls, and its activation epoch.

    ``version`` counts the writes of the row (1 at creation, +1 per commit);
    ``epoch`` counts its activations (0: never hosted); ``updated_at`` is Unix
    time in seconds. ``list()`` gives rows whose ``state`` is ``b""`` (not read).
    """

    agent_id: str
    namespace: str
    name: str | None
    cls: str
    lifetime: str
    state: bytes
    seq: int
    version: int
    epoch: int
    updated_at: float
    init_args: bytes = b""   # the constructor's arguments, a pickle of (args, kwargs)

    def __repr__(self) -> str:  # the state is an agent's pickled data: its size says enough
        return (f"Row(agent_id={self.agent_id!r}, namespace={self.namespace!r}, name={self.name!r}, "
                f"cls={self.cls!r}, lifetime={self.lifetime!r}, state=<{len(self.state)} bytes>, "
                f"seq={self.seq}, version={self.version}, epoch={self.epoch}, updated_at={self.updated_at})")


@dataclasses.dataclass(frozen=True)
class Commit:
    """An agent's state after ``seq`` completed calls, from its activation ``epoch``, to be written."""

    agent_id: str
    epoch: int
    seq: int
    state: bytes

    def __repr__(self) -> str:
        return f"Commit({self.agent_id!r}, epoch={self.epoch}, seq={self.seq}, state=<{len(self.state)} bytes>)"


class StateStore(Protocol):
    """Where agents' state outlives every process. Synchronous: call it from worker or writer threads,
    never on an asyncio loop. SqliteStore and PostgresStore keep one schema and the same semantics."""

    #: the store's URL without any secret, for messages
    url: str

    def create(self, agent_id: str, namespace: str, name: str | None, cls: str, lifetime: str,
               state: bytes = b"", seq: int = 0, init_args: bytes = b"") -> Row:
        """Insert a new agent at epoch 0; NameTakenError when ``name`` already lives in ``namespace``."""

    def activate(self, agent_id: str) -> Row:
        """Take the next epoch (compare-and-set) and return the row with it; NoSuchAgentError if absent."""

    def activate_many(self, agent_ids: Sequence[str]) -> dict[str, Row]:
        """activate() for many agents in one transaction: {agent_id: its row at its new epoch}; absent ids are
        left out."""

    def commit(self, batch: Sequence[Commit]) -> set[str]:
        """Write the batch in one transaction; return the ids whose commit was refused (stale epoch or gone).

        A commit is written only at the row's epoch and never moves seq
        backwards (an older seq at the current epoch is skipped, not refused);
        an id is returned when any of its commits in the batch was refused.
        """

    def get(self, agent_id: str) -> Row | None:
        """The stored agent, None if there is none."""

    def by_name(self, namespace: str, name: str) -> Row | None:
        """The agent of that name in the namespace, None if there is none."""

    def delete(self, agent_id: str) -> bool:
        """Remove the agent (its name is free again); whether it was there."""

    def list(self, namespace: str) -> list[Row]:
        """The namespace's agents ordered by id, without their state bytes."""

    def size(self) -> int:
        """The bytes the agents' rows take on disk (SQLite: the file and its WAL; PostgreSQL: the table with its
        TOAST and indexes)."""

    def schema_version(self) -> int:
        """The schema version the store is at."""

    def close(self) -> None:
        """Close the store's connections; it cannot be used afterwards."""
