"""Agents of the durable-agent tests (importable by name in every process of a test), a process's RSS and a
store's size on disk."""
from __future__ import annotations

import time

from agentmesh import AgentBase
from agentmesh.rpc import async_func
from agentmesh.store import open_store


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


class Ballast(AgentBase):
    """A counter carrying about ``size`` bytes of state."""

    def __init__(self, name: str, size: int = 0) -> None:
        super().__init__(name)
        self.count = 0
        self.ballast = bytes(range(256)) * (size // 256)

    def inc(self) -> int:
        self.count += 1
        return self.count

    def peek(self) -> int:
        return self.count


def rss_kb(pid: int) -> int:
    """Resident set size of a process (kB), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def store_bytes(url: str) -> int:
    """The store's size on disk (StateStore.size)."""
    store = open_store(url)
    try:
        return store.size()
    finally:
        store.close()
