"""An agent's memory: the messages it has seen, in order."""
from __future__ import annotations

from typing import Any, Iterable

from .._placeholder import AsyncResult
from ..message import Msg


class TemporaryMemory:
    """An in-process list of messages; pickles with the agent's state.

    As in AgentScope, a message whose id is already held is not added again
    (in a msghub an agent may see a reply both as its input and as a
    broadcast), and a placeholder whose value is here is kept as that value;
    a pending one is kept as it is, so adding never waits.
    """

    def __init__(self) -> None:
        self._content: list[Any] = []
        self._ids: set[str] | None = None   # ids of the messages held, made on first add (not pickled)

    def add(self, memories: Any) -> None:
        """Add a message, or each of a list of messages (those already held are skipped)."""
        if memories is None:
            return
        ids = self._held_ids()
        for memory in (memories if isinstance(memories, (list, tuple)) else (memories,)):
            memory = _settled(memory)
            if isinstance(memory, Msg):
                if memory.id in ids:
                    continue
                ids.add(memory.id)
            self._content.append(memory)

    def _held_ids(self) -> set[str]:
        if self._ids is None:
            self._ids = {m.id for m in self._content if isinstance(m, Msg)}
        return self._ids

    def __getstate__(self) -> dict[str, Any]:
        return {"_content": self._content}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._content = state["_content"]
        self._ids = None

    def get_memory(self, recent_n: int | None = None) -> list[Any]:
        """The messages, oldest first; the last recent_n when given."""
        if recent_n is None:
            return list(self._content)
        return list(self._content[-recent_n:]) if recent_n > 0 else []

    def delete(self, index: int | Iterable[int]) -> None:
        indexes = {index} if isinstance(index, int) else set(index)
        self._content = [m for i, m in enumerate(self._content) if i not in indexes]
        self._ids = None

    def clear(self) -> None:
        self._content = []
        self._ids = None

    def size(self) -> int:
        return len(self._content)

    def __len__(self) -> int:
        return len(self._content)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TemporaryMemory) and self._content == other._content


def _settled(memory: Any) -> Any:
    """A placeholder's value when it is here (never waits); anything else as it is."""
    if isinstance(memory, AsyncResult) and memory.done():
        try:
            return memory.result()
        except Exception:  # noqa: BLE001 - a failed call is remembered as its placeholder
            return memory
    return memory
