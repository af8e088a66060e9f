"""Ids of agents and messages: unique across the mesh without asking the OS for randomness each time.

uuid4 reads os.urandom for every id (30 µs each on a busy VM, a fifth of a
placement). An id here is a random 80-bit prefix drawn once per process
(again after fork) and a counter: 32 hex characters, like a uuid4's hex.
"""
from __future__ import annotations

import itertools
import os
import secrets

_state: list = []


def _reseed() -> None:
    _state[:] = [secrets.token_hex(10), itertools.count(1)]


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """A new id: 20 hex characters of this process's prefix and 12 of its counter."""
    prefix, counter = _state
    return f"{prefix}{next(counter):012x}"
