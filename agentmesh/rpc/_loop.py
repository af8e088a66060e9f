"""The process's one I/O event loop, run in a daemon thread.

Every gRPC channel and server of agentmesh in a process lives on this loop,
so a server hosting agents that themselves call other agents needs no second
loop. User threads hand work to it; they never run gRPC themselves.
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from typing import Any, Awaitable, Callable, TypeVar

log = logging.getLogger("agentmesh.rpc")

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_exit_hooks: list[Callable[[], Awaitable[Any]]] = []


def get_loop() -> asyncio.AbstractEventLoop:
    """The running I/O loop, started on first use."""
    global _loop, _thread
    loop = _loop
    if loop is not None:
        return loop
    with _lock:
        if _loop is None:
            ready = threading.Event()
            new_loop = asyncio.new_event_loop()

            def run() -> None:
                asyncio.set_event_loop(new_loop)
                new_loop.call_soon(ready.set)
                new_loop.run_forever()

            _thread = threading.Thread(target=run, name="agentmesh-io", daemon=True)
            _thread.start()
            ready.wait()
            _loop = new_loop
            atexit.register(_shutdown)
        return _loop


def in_loop_thread() -> bool:
    """True when called from the I/O loop's own thread."""
    return _thread is not None and threading.current_thread() is _thread


def run_sync(coro: Awaitable[T], timeout: float | None = None) -> T:
    """Run a coroutine on the I/O loop and wait for its result from a user thread."""
    if in_loop_thread():
        raise RuntimeError("agentmesh: a blocking call was made on the I/O loop thread")
    fut = asyncio.run_coroutine_threadsafe(coro, get_loop())
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise TimeoutError(f"agentmesh: operation did not finish within {timeout} s") from None


def spawn(coro: Awaitable[Any]) -> concurrent.futures.Future:
    """Start a coroutine on the I/O loop without waiting for it."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def on_exit(hook: Callable[[], Awaitable[Any]]) -> None:
    """Run an async clean-up on the I/O loop at interpreter exit (servers, channels)."""
    _exit_hooks.append(hook)


def _shutdown() -> None:
    loop = _loop
    if loop is None or not loop.is_running():
        return

    async def run_hooks() -> None:
        for hook in reversed(_exit_hooks):
            try:
                await hook()
            except Exception:  # noqa: BLE001 - clean-up must go on
                log.debug("exit hook failed", exc_info=True)

    try:
        asyncio.run_coroutine_threadsafe(run_hooks(), loop).result(5)
    except Exception:  # noqa: BLE001
        log.debug("exit hooks did not finish", exc_info=True)
    loop.call_soon_threadsafe(loop.stop)
