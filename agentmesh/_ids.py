"""Ids of agents and messages: unique across the mesh without asking the OS for randomness each time.

uuid4 reads os.urandom for every id (30 µs each on a busy VM, a fifth of a
placement). An id here is a random 80-bit prefix drawn once per process
(again after fork) and a counter: 32 hex characters, like a uuid4's hex.
"""
from __future__ import annotations

import contextvars
import itertools
import os
import secrets
from typing import Any

_state: list = []
#: on a server, the call an agent method runs for and how many calls it has made so far
_running: contextvars.ContextVar[list | None] = contextvars.ContextVar("agentmesh_running_call", default=None)


def _reseed() -> None:
    _state[:] = [secrets.token_hex(10), itertools.count(1)]


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """A new id: 20 hex characters of this process's prefix and 12 of its counter."""
    prefix, counter = _state
    return f"{prefix}{next(counter):012x}"


def running(call_id: str) -> contextvars.Token:
    """Mark the calls made from here on (this thread or task) as made by call_id, until reset(token)."""
    return _running.set([call_id, 0])


def reset(token: contextvars.Token) -> None:
    """End what running() began."""
    _running.reset(token)


def derived_call_id() -> str | None:
    """The id of the next call made by a running call: its id and a count, so a replay of that call (after
    a failover) makes its calls under the same ids and a server that answered them answers again instead of
    running them twice. None outside a running call."""
    frame = _running.get()
    if frame is None:
        return None
    frame[1] += 1
    return f"{frame[0]}.{frame[1]}"


def carried(coroutine: Any) -> Any:
    """coroutine, run in another task or loop as part of the running call (its calls get derived ids too)."""
    frame = _running.get()
    if frame is None:
        return coroutine

    async def run() -> Any:
        _running.set(frame)   # the task's own context
        return await coroutine

    return run()


def call_order(call_id: str) -> tuple[int, ...]:
    """Sorts a process's calls in the order they were made: "<prefix>-12" < "<prefix>-12.3" < "<prefix>-13"."""
    return tuple(int(part) for part in call_id.rsplit("-", 1)[1].split("."))
