"""Agents of the durable-agent tests (importable by name in every process of a test)."""
from __future__ import annotations

import time

from agentmesh import AgentBase
from agentmesh.rpc import async_func


class Tally(AgentBase):
    """A counter of durable-agent tests: add() may take a while (to be caught running by a stop)."""

    def __init__(self, name: str, size: int = 0) -> None:
        super().__init__(name)
        self.total = 0
        self.ballast = b"x" * size     # state of a chosen size

    @async_func
    def add(self, n: int, delay: float = 0.0) -> int:
        time.sleep(delay)
        self.total += n
        return self.total

    def get_total(self) -> int:
        return self.total

    def unchanged(self) -> int:
        return self.total
