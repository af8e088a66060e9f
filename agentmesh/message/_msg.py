"""Msg: what agents say to each other."""
from __future__ import annotations

import time
from typing import Any

from .._ids import new_id


class Msg:
    """A message: who says it, what, in which role; with a unique id and a timestamp."""

    __slots__ = ("id", "name", "content", "role", "metadata", "url", "timestamp")

    def __init__(self, name: str, content: Any, role: str = "assistant", metadata: Any = None,
                 url: str | list[str] | None = None, *, echo: bool = False, **kwargs: Any) -> None:
        self.id = new_id()
        self.name = name
        self.content = content
        self.role = role
        self.metadata = metadata if metadata is not None else (kwargs or None)
        self.url = url
        self.timestamp = time.strftime("%Y-%m-%d %H:%M:%S")

    def to_dict(self) -> dict[str, Any]:
        """The message as a plain dict (for logs and JSON)."""
        return {k: getattr(self, k) for k in self.__slots__}

    def formatted_str(self, colored: bool = False) -> str:
        """"name: content", as AgentScope prints a message (colored is accepted for its signature)."""
        return f"{self.name}: {self.content}"

    def __getitem__(self, key: str) -> Any:
        """Dict-style access to a field (``msg["content"]``), as AgentScope's dict-based messages allowed."""
        if key not in self.__slots__:
            raise KeyError(key)
        return getattr(self, key)

    def __getstate__(self) -> dict[str, Any]:
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Msg):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"Msg(name={self.name!r}, content={self.content!r}, role={self.role!r})"

    def __str__(self) -> str:
        return f"{self.name}: {self.content}"
