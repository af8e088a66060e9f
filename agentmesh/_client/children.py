"""Child mode: a few local server processes shared by every child-mode agent of a runtime."""
from __future__ import annotations

import threading
from typing import Any, Callable

from .._process import ServerProcess


class ChildPool:
    """Child servers, started on first use; config() says how to start one (token, limits, TLS)."""

    def __init__(self, config: Callable[[], dict[str, Any]], size: Callable[[], int]) -> None:
        self._config = config
        self._size = size
        self._lock = threading.Lock()
        self._children: list[ServerProcess] = []
        self._placed: dict[ServerProcess, int] = {}

    @property
    def processes(self) -> list[ServerProcess]:
        """The child servers running now."""
        with self._lock:
            return list(self._children)

    def _start(self, n: int) -> None:
        for _ in range(n):
            child = ServerProcess(self._config())
            self._children.append(child)
            self._placed[child] = 0

    def choose(self, exclude: set[str] | frozenset = frozenset()) -> ServerProcess:
        """The child with the fewest agents placed so far (starting the pool on first use)."""
        with self._lock:
            for dead in [c for c in self._children if not c.alive]:
                self._children.remove(dead)
                self._placed.pop(dead, None)
            wanted = self._size()
            if len(self._children) < wanted:   # first use, or replacing a dead child
                self._start(wanted - len(self._children))
            candidates = [c for c in self._children if not c.address or c.address not in exclude]
            if not candidates:
                self._start(1)
                candidates = self._children[-1:]
            child = min(candidates, key=lambda c: self._placed[c])
            self._placed[child] += 1
        return child

    def grow(self) -> ServerProcess:
        """Start one more child (the others are full)."""
        with self._lock:
            self._start(1)
            return self._children[-1]

    def namespace_of(self, address: str) -> str | None:
        """The namespace the child of this pool at address serves; None when no child listens there."""
        for child in self.processes:
            if child.address == address:
                return str(child.config.get("namespace", "default"))
        return None

    def is_plaintext(self, address: str) -> bool:
        """True for a child of this pool that listens without TLS (loopback, behind a token)."""
        return any(child.address == address and not child.config.get("tls_cert") for child in self.processes)

    def stop(self) -> None:
        """Stop every child now (their agents end with them)."""
        with self._lock:
            children, self._children = self._children, []
            self._placed.clear()
        for child in children:
            child.stop(timeout=3.0, drain=False)
