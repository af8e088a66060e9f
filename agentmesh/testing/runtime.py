"""Runtimes for tests: change the default runtime's settings for a while, or use a fresh runtime."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

from .._config import Settings
from .._runtime import Runtime, default_runtime, set_default_runtime


@contextlib.contextmanager
def settings_changed(**options: Any) -> Iterator[Runtime]:
    """The default runtime with options set; afterwards its settings as they were, and nothing the block
    opened (sessions, agents, child servers) left to act later under other settings."""
    runtime = default_runtime()
    saved = runtime.settings
    runtime.configure(**options)
    try:
        yield runtime
    finally:
        runtime.close()
        runtime.configure(**dataclasses.asdict(saved))


@contextlib.contextmanager
def fresh_runtime(**options: Any) -> Iterator[Runtime]:
    """A new runtime as the default (settings from the environment and options), closed afterwards.

    Nothing it opened (sessions, views, child servers, agents) outlives the block.
    """
    runtime = Runtime(Settings.from_env().replace(**options))
    previous = set_default_runtime(runtime)
    try:
        yield runtime
    finally:
        runtime.close()
        runtime.loop.stop()
        set_default_runtime(previous)
