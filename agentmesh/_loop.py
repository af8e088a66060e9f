"""An I/O event loop in a daemon thread, on which every gRPC channel and server of a runtime lives.

A server hosting agents that themselves call other agents needs no second
loop. User threads hand work to it; they never run gRPC themselves.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")


class IoLoop:
    """An asyncio loop running in its own thread, started on first use."""

    def __init__(self, name: str = "agentmesh-io") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        """True once the loop thread runs."""
        return self._loop is not None and self._loop.is_running()

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop, started on first use."""
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                new_loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(new_loop)
                    new_loop.call_soon(ready.set)
                    new_loop.run_forever()

                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = new_loop
            return self._loop

    def in_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result from another thread."""
        if self.in_thread():
            raise RuntimeError("agentmesh: a blocking call was made on the I/O loop thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self.get())  # type: ignore[arg-type]
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"agentmesh: operation did not finish within {timeout} s") from None

    def spawn(self, coro: Awaitable[Any]) -> concurrent.futures.Future:
        """Start a coroutine on the loop without waiting for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.get())  # type: ignore[arg-type]

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the loop: now when already there, else as soon as it gets to it."""
        if self.in_thread():
            fn(*args)
        else:
            self.get().call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Stop the loop thread (what runs on it should be closed first)."""
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None and not self.in_thread():
                self._thread.join(2.0)
        self._loop = self._thread = None
