"""An agent's memory: the messages it has seen, in order."""
from __future__ import annotations

from typing import Any, Iterable


class TemporaryMemory:
    """An in-process list of messages; pickles with the agent's state."""

    def __init__(self) -> None:
        self._content: list[Any] = []

    def add(self, memories: Any) -> None:
        """Add a message, or each of a list of messages."""
        if memories is None:
            return
        if isinstance(memories, (list, tuple)):
            self._content.extend(memories)
        else:
            self._content.append(memories)

    def get_memory(self, recent_n: int | None = None) -> list[Any]:
        """The messages, oldest first; the last recent_n when given."""
        if recent_n is None:
            return list(self._content)
        return list(self._content[-recent_n:]) if recent_n > 0 else []

    def delete(self, index: int | Iterable[int]) -> None:
        indexes = {index} if isinstance(index, int) else set(index)
        self._content = [m for i, m in enumerate(self._content) if i not in indexes]

    def clear(self) -> None:
        self._content = []

    def size(self) -> int:
        return len(self._content)

    def __len__(self) -> int:
        return len(self._content)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TemporaryMemory) and self._content == other._content
