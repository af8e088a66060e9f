"""The server's loop for agents written with ``async def``: their calls are awaited, not given a thread each.

An agent whose class has a public coroutine method is run by a task on one
event loop of the server's (its own thread, apart from the I/O loop, so agent
code never stalls the sessions). The task works through the agent's calls in
order, as a worker thread does for other agents: a coroutine method is awaited
there, a plain one runs on a worker thread while the task waits. Thousands of
agents awaiting I/O cost no thread. A call its caller cancels is cancelled here.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from typing import Any, Callable

from .. import _ids
from .._loop import IoLoop
from ..v1 import agent_server_pb2 as pb
from ._host import AgentHost, Work


def coroutine_method(cls: type, name: str) -> bool:
    """True when cls.name is an ``async def`` function, or is __call__ over an ``async def reply``."""
    if name == "__call__" and not inspect.iscoroutinefunction(inspect.getattr_static(cls, name, None)):
        name = "reply"     # AgentBase.__call__ returns what reply() returns: a coroutine, for an async reply
    found = inspect.getattr_static(cls, name, None)
    return inspect.iscoroutinefunction(found) or inspect.isasyncgenfunction(found)


def has_coroutines(cls: type) -> bool:
    """True when cls has a public ``async def`` method or async generator (reply and __call__ included)."""
    return any(coroutine_method(cls, name) for name in dir(cls) if not name.startswith("_") or name == "__call__")


class AgentLoop:
    """The event loop of a server's async agents, started on first use, with the coroutine calls running."""

    def __init__(self, execute: Callable[[AgentHost, Work], pb.Reply],
                 execute_async: Callable[[AgentHost, Work], Any],
                 finish: Callable[[AgentHost, Work, "pb.Reply | None"], None],
                 executor: concurrent.futures.Executor) -> None:
        self._execute = execute               # a sync call, on a worker thread
        self._execute_async = execute_async   # a coroutine call, on this loop
        self._finish = finish                 # (host, work, its reply or None: not run) -> answered
        self._executor = executor
        self.io = IoLoop("agentmesh-agents")
        self._classes: dict[type, bool] = {}               # class -> has coroutine methods (memo)
        self._methods: dict[tuple[type, str], bool] = {}   # (class, method) -> is a coroutine method (memo)
        self._running: dict[str, asyncio.Task] = {}   # call_id -> the task awaiting that coroutine call

    def runs(self, host: AgentHost) -> bool:
        """True when host's calls run on this loop (its class has coroutine methods)."""
        cls = type(host.agent)
        found = self._classes.get(cls)
        if found is None:
            found = self._classes[cls] = has_coroutines(cls)
        return found

    def start(self, host: AgentHost) -> None:
        """Start working through host's ready calls (any thread)."""
        self.io.get().call_soon_threadsafe(lambda: asyncio.ensure_future(self._run(host)))

    def start_one(self, host: AgentHost, work: Work) -> None:
        """Run one interleaving call beside the agent's others (any thread)."""
        self.io.get().call_soon_threadsafe(lambda: asyncio.ensure_future(self._run_one(host, work)))

    def stop(self) -> None:
        """Stop the loop, if it was started (the server has stopped: nothing runs on it any more)."""
        if self.io.started:
            self.io.stop()

    def await_here(self, coroutine: Any) -> Any:
        """Run a coroutine on this loop from a worker thread and wait for its value (a sync method returned it)."""
        return self.io.run(_ids.carried(coroutine))

    def cancel(self, call_id: str) -> None:
        """Cancel the coroutine call call_id if it runs here (any thread). The lookup happens on this loop,
        where a runner takes a call and starts its task in one step, so a call just taken is found."""
        if self.io.started:
            self.io.get().call_soon_threadsafe(self._cancel_here, call_id)

    def _cancel_here(self, call_id: str) -> None:
        task = self._running.get(call_id)
        if task is not None:
            task.cancel()

    def _is_coroutine(self, host: AgentHost, name: str) -> bool:
        key = (type(host.agent), name)
        found = self._methods.get(key)
        if found is None:
            found = self._methods[key] = coroutine_method(*key)
        return found

    async def _call(self, host: AgentHost, work: Work) -> pb.Reply:
        if not self._is_coroutine(host, work.call.method):
            return await asyncio.wrap_future(self._executor.submit(self._execute, host, work))
        call_id = work.call.call_id
        task = asyncio.ensure_future(self._execute_async(host, work))
        self._running[call_id] = task
        try:
            return await task
        finally:
            self._running.pop(call_id, None)

    async def _run(self, host: AgentHost) -> None:
        while True:
            work = host.next_ready()
            if work is None:
                return
            if work.replay is not None or work.cancelled:
                self._finish(host, work, None)
                continue
            self._finish(host, work, await self._call(host, work))

    async def _run_one(self, host: AgentHost, work: Work) -> None:
        self._finish(host, work, await self._call(host, work))
