"""Agents the tests place on real servers (importable there: servers inherit sys.path)."""
from __future__ import annotations

import asyncio
import os
import threading
import time

from agentmesh import AgentBase, Msg
from agentmesh.rpc import async_func, sync_func


class Echo(AgentBase):
    """Counts its calls; reply answers with the count and what it got."""

    def __init__(self, name: str, start: int = 0) -> None:
        super().__init__(name)
        self.count = start

    def reply(self, x=None):
        self.count += 1
        self.observe(x)
        return Msg(self.name, {"count": self.count, "got": getattr(x, "content", x)})

    def ping(self, value=None):
        return value

    def get_count(self) -> int:
        return self.count

    def pid(self) -> int:
        return os.getpid()

    @async_func
    def slow(self, seconds: float, value=None):
        time.sleep(seconds)
        return value

    def sync_slow(self, seconds: float, value=None):
        time.sleep(seconds)
        return value

    def boom(self, message: str = "bad thing"):
        raise ValueError(message)


class Sleeper(AgentBase):
    """reply sleeps, then adds one to the content: chains of them take the sum of their sleeps."""

    def __init__(self, name: str, seconds: float = 1.0) -> None:
        super().__init__(name)
        self.seconds = seconds

    def reply(self, x=None):
        time.sleep(self.seconds)
        return Msg(self.name, x.content + 1)


class Recorder(AgentBase):
    """Records the order calls arrive in; max_concurrency overridable by subclasses."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.seen: list = []
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    @async_func
    def record(self, value, seconds: float = 0.0):
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(seconds)
        self.seen.append(value)
        with self._lock:
            self.active -= 1
        return value

    def get_seen(self) -> list:
        return list(self.seen)

    def get_peak(self) -> int:
        return self.peak

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


class Parallel2(Recorder):
    max_concurrency = 2


class Relay(AgentBase):
    """Waits for a placeholder from another agent and adds one."""

    def reply(self, x=None):
        return Msg(self.name, x.content + 1)


class FanOut(AgentBase):
    """Holds proxies of other agents (constructor arguments) and asks them all at once."""

    def __init__(self, name: str, workers: list) -> None:
        super().__init__(name)
        self.workers = workers

    def reply(self, x=None):
        results = [w.reply(x) for w in self.workers]
        return Msg(self.name, [r.content for r in results])


class WithFunction(AgentBase):
    """Takes a function (a lambda) as a constructor argument."""

    def __init__(self, name: str, fn) -> None:
        super().__init__(name)
        self.fn = fn

    def reply(self, x=None):
        return Msg(self.name, self.fn(x.content))


class Modes(AgentBase):
    """Custom methods: one made asynchronous, one made synchronous."""

    @async_func
    def later(self, value):
        time.sleep(0.2)
        return value * 2

    @sync_func
    def now(self, value):
        return value * 3

    def plain(self, value):
        return value - 1


class BrokenInit(AgentBase):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        raise RuntimeError("no model for this agent")


class Fragile(Echo):
    """Error paths: a result that cannot be pickled, a large result, a slow call that changes state."""

    def make_lock(self):
        return threading.Lock()

    def blob(self, size: int) -> bytes:
        return b"x" * size

    @async_func
    def slow_add(self, seconds: float, n: int = 1) -> int:
        time.sleep(seconds)
        self.count += n
        return self.count


class Talker(Echo):
    """Prints like an AgentScope agent speaking (to its process's stdout)."""

    @async_func
    def talk(self, lines: int, text: str) -> int:
        import sys

        for i in range(lines):
            print(f"{text} {i:06d} ........................................")
        sys.stdout.flush()
        return lines


class Heavy(AgentBase):
    """Holds `size` bytes of state (1 MiB by default): every checkpoint of it is that big."""

    def __init__(self, name: str, size: int = 1 << 20) -> None:
        super().__init__(name)
        self.blob = os.urandom(size)
        self.made = 0

    def noop(self, value=None):
        return value

    def make(self, size: int) -> bytes:
        self.made += 1
        return b"x" * size

    def get_made(self) -> int:
        return self.made

    def nap(self, seconds: float, value=None):
        time.sleep(seconds)
        return value


class Worker(AgentBase):
    """A long call, a status query that may interleave with it, and one that may not."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.done = 0

    @async_func
    def work(self, seconds: float) -> int:
        time.sleep(seconds)
        self.done += 1
        return self.done

    @sync_func(interleave=True)
    def status(self) -> int:
        return self.done

    def ordered_status(self) -> int:
        return self.done


class Asker(AgentBase):
    """Asks another agent (a proxy it is given) and returns what that one said."""

    def __init__(self, name: str) -> None:
        super().__init__(name, use_memory=False)

    def ask(self, other, text: str) -> str:
        return other.reply(Msg(self.name, text)).content["got"]


class Forwarder(AgentBase):
    """Starts a call on another agent (a proxy it is given) and returns its placeholder, still pending."""

    def forward(self, other, seconds: float, value):
        return other.slow(seconds, value)


class Cruncher(AgentBase):
    """Counts; holds the GIL in C code (``sum`` over a ``range``, no bytecode runs) or spins in Python for a
    given time, as a tokenizer, a big ``json.loads`` or a pure-Python loop would."""

    def __init__(self, name: str) -> None:
        super().__init__(name, use_memory=False)
        self.count = 0

    def inc(self) -> int:
        self.count += 1
        return self.count

    @async_func
    def nap(self, seconds: float) -> int:
        """Sleep (a call that stays in flight without using the CPU), then count."""
        time.sleep(seconds)
        return self.inc()

    @async_func
    def hold_gil(self, seconds: float) -> float:
        """Hold the GIL for about seconds (calibrated on this machine first); the seconds it took."""
        n, took = 1_000_000, 0.0
        while took < 0.5:                   # calibrate on a sample long enough to be steady
            n *= 2
            start = time.perf_counter()
            sum(range(n))
            took = time.perf_counter() - start
        per_item = took / n
        start = time.perf_counter()
        sum(range(int(1.1 * seconds / per_item)))   # 10 % more: a busy machine's calibration runs slow
        return time.perf_counter() - start

    @async_func
    def spin(self, seconds: float) -> int:
        """A pure-Python CPU loop for seconds; how many turns it made."""
        turns, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            turns += 1
        return turns


class Thinker(AgentBase):
    """An agent written the modern way: ``async def`` methods that await I/O, and a reply() that awaits."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.log: list = []

    async def think(self, x, seconds: float = 0.0):
        await asyncio.sleep(seconds)
        return x

    async def record(self, i: int, seconds: float = 0.01) -> int:
        """Logs its start and end around an await: interleaved calls would show as start, start, end, end."""
        self.log.append(("start", i))
        await asyncio.sleep(seconds)
        self.log.append(("end", i))
        return i

    async def ask(self, other, x, seconds: float = 0.0):
        """Awaits another agent (on any server) without blocking this server's loop."""
        return await other.think(x, seconds)

    def threads(self) -> int:
        """This server process's thread count."""
        return threading.active_count()

    def get_log(self) -> list:
        return list(self.log)

    async def reply(self, x=None):
        self.memory.add(x)
        await asyncio.sleep(0.01)
        msg = Msg(self.name, f"{self.name} heard {len(self.memory.get_memory())}")
        self.memory.add(msg)
        return msg


class Streamer(AgentBase):
    """Streams: a generator and an async generator; reads streams handed to it; tells how far it got."""

    def __init__(self, name: str) -> None:
        super().__init__(name, use_memory=False)
        self.made = 0

    def count(self, n: int, seconds: float = 0.0, size: int = 0):
        for i in range(n):
            if seconds:
                time.sleep(seconds)
            self.made += 1
            yield bytes(size) if size else i

    def fail_at(self, n: int):
        yield from range(n)
        raise ValueError(f"item {n} is bad")

    async def tokens(self, text: str, seconds: float = 0.0):
        for word in text.split():
            await asyncio.sleep(seconds)
            yield word

    @sync_func(interleave=True)
    def made_so_far(self) -> int:
        return self.made

    @sync_func(interleave=True)
    def rss_mib(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def consume(self, stream) -> list:
        return list(stream)

    async def consume_async(self, stream) -> list:
        return [item async for item in stream]


class Prodder(AgentBase):
    """Changes another agent from its own server: replies to it and messages it observes."""

    def prod(self, target, replies: int, observations: int) -> int:
        for i in range(replies):
            target.reply(Msg(self.name, f"prod {i}")).content   # wait for each: the change is done
        for i in range(observations):
            target.observe(Msg(self.name, f"note {i}"))
        return target.get_count()


class Forwarding(AgentBase):
    """Calls another agent for its caller (a third party to that agent)."""

    def add(self, target, tag):
        return target.reply(Msg(self.name, tag)).content["count"]

    def note(self, target, tag) -> None:
        target.observe(Msg(self.name, tag))

    def bump(self, target) -> int:
        return target.inc()


class TeamMember(AgentBase):
    """Remembers what it is told and hears; answers with how much it remembers."""

    def reply(self, x=None):
        if x is not None:
            self.memory.add(x)
        answer = Msg(self.name, f"{self.name} heard {self.memory.size()}")
        self.memory.add(answer)
        return answer

