"""agentmesh agents of the benchmarks (importable by the servers: they inherit sys.path).

The peers' modules define the same classes with the same methods in their own
terms (workloads_agentscope.py, workloads_ray.py).
"""
import asyncio
import threading
import time

from agentmesh import AgentBase, Msg
from agentmesh.rpc import async_func


class Noop(AgentBase):
    """The no-op agent: every workload but the tutorial calls it."""

    def ping(self, x=None):
        return x

    @async_func
    def aping(self, x=None):
        return x

    def echo(self, data):
        return data


class WebAgent(AgentBase):
    """The tutorial's agent: reply() sleeps (5 s in the tutorial) and answers."""

    def __init__(self, name, sleep=5.0):
        super().__init__(name)
        self.sleep = sleep

    def get_answer(self, url, query):
        time.sleep(self.sleep)
        return f"Answer from {self.name}"

    def ready(self):
        return True

    def reply(self, x=None):
        return Msg(name=self.name, content=self.get_answer(x.content["url"], x.content["query"]))


class Busy(AgentBase):
    """Counts; works for a given time without giving up the GIL (C code), spinning in Python, or sleeping."""

    def __init__(self, name):
        super().__init__(name, use_memory=False)
        self.count = 0

    def inc(self):
        self.count += 1
        return self.count

    @async_func
    def hold_gil(self, seconds):
        """One C call (sum over a range, calibrated here first) that holds the GIL about seconds."""
        n, took = 1_000_000, 0.0
        while took < 0.2:
            n *= 2
            start = time.perf_counter()
            sum(range(n))
            took = time.perf_counter() - start
        start = time.perf_counter()
        sum(range(int(seconds * n / took)))
        return time.perf_counter() - start

    @async_func
    def spin(self, seconds):
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            pass
        return seconds

    @async_func
    def nap(self, seconds):
        time.sleep(seconds)
        return self.inc()


class AsyncNoop(AgentBase):
    """The async agent of the async workloads: coroutine methods and a generator that streams."""

    def __init__(self, name):
        super().__init__(name, use_memory=False)

    async def aping(self, x=None):
        return x

    async def wait(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    def count(self, n):
        yield from range(n)

    def threads(self):
        return threading.active_count()


class Counter(AgentBase):
    """The durable agents' benchmark agent: inc() changes its state (a commit per call), peek() does not."""

    def __init__(self, name, size=0):
        super().__init__(name)
        self.count = 0
        self.ballast = bytes(range(256)) * (size // 256)   # state of about that size

    def inc(self):
        self.count += 1
        return self.count

    def peek(self):
        return self.count
