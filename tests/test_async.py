"""Async agents: ``async def`` methods run on the server's agent loop, results are awaitable, calls cancel."""
import asyncio
import threading
import time

import pytest

from agentmesh import AsyncResult, Msg, msghub
from agentmesh.pipelines import sequential_pipeline
from conftest import server_info, wait_until
from sample_agents import Echo, Thinker


def at(launcher) -> dict:
    return {"host": "127.0.0.1", "port": launcher.port}


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_100_async_calls_to_100_agents_gathered_take_about_one_call_and_no_thread_each(servers):
    server = servers(capacity=128)
    agents = [Thinker(f"t{i}", to_dist=at(server)) for i in range(100)]
    assert agents[-1].threads() > 0                     # all built
    idle = threads_of(server.pid)
    busiest = []

    def watch() -> None:       # the thread count while all 100 calls are awaiting on the server
        wait_until(lambda: server_info(server).inflight >= 100, timeout=30)
        busiest.append(threads_of(server.pid))

    watcher = threading.Thread(target=watch)
    watcher.start()

    async def main():
        return await asyncio.gather(*(a.think(i, 1.5) for i, a in enumerate(agents)))

    start = time.monotonic()
    assert asyncio.run(main()) == list(range(100))
    took = time.monotonic() - start
    watcher.join()
    assert took < 4.0, f"100 gathered 1.5 s calls took {took:.1f} s"
    assert busiest[0] - idle < 5, f"{busiest[0] - idle} threads more while 100 calls awaited"


def test_async_calls_of_one_agent_run_one_at_a_time_in_order(server):
    agent = Thinker("ordered", to_dist=at(server))

    async def main():
        return await asyncio.gather(*(agent.record(i) for i in range(20)))

    assert asyncio.run(main()) == list(range(20))
    assert agent.get_log() == [(edge, i) for i in range(20) for edge in ("start", "end")]


def test_sync_methods_and_replies_are_awaitable_and_a_sync_caller_is_unchanged(server):
    echo = Echo("echo", to_dist=at(server))

    async def main():
        reply = await echo(Msg("u", "hi"))         # reply() is asynchronous on the proxy: an awaitable result
        count = await echo.get_count.aio()         # a synchronous method, awaited
        slow = echo.slow(0.2, "slow")
        assert isinstance(slow, AsyncResult)
        return reply.content["count"], count, await slow

    assert asyncio.run(main()) == (1, 1, "slow")
    assert echo.get_count() == 1                   # the synchronous form waits, as before
    assert echo.slow(0.0, 5).result() == 5


def test_a_cancelled_call_is_cancelled_on_the_server_too(server):
    agent = Thinker("cancel", to_dist=at(server))

    async def main():
        task = asyncio.ensure_future(agent.think("never", 30))
        await asyncio.sleep(0)                     # the task starts awaiting (a task cancelled unstarted never does)
        while server_info(server).inflight < 1:    # running on the server: cancelled there, not just dropped
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(agent.think("late", 30), 0.3)
        start = time.monotonic()
        after = await agent.think("after")         # not queued behind 60 s of cancelled calls
        return after, time.monotonic() - start

    after, took = asyncio.run(main())
    assert after == "after" and took < 5.0
    wait_until(lambda: server_info(server).inflight == 0)


def test_an_async_method_awaits_an_agent_on_another_server_without_blocking_its_loop(servers):
    s1, s2 = servers(capacity=32), servers(capacity=32)
    askers = [Thinker(f"asker{i}", to_dist=at(s1)) for i in range(20)]
    answerers = [Thinker(f"answerer{i}", to_dist=at(s2)) for i in range(20)]

    async def main():
        return await asyncio.gather(*(asker.ask(answerer, i, 1.0)
                                      for i, (asker, answerer) in enumerate(zip(askers, answerers))))

    start = time.monotonic()
    assert asyncio.run(main()) == list(range(20))
    assert time.monotonic() - start < 5.0          # 20 s if each ask held the loop


def test_msghub_and_pipeline_with_async_agents(servers):
    s1, s2 = servers(capacity=8), servers(capacity=8)
    a, b = Thinker("a", to_dist=at(s1)), Thinker("b", to_dist=at(s2))
    with msghub([a, b], announcement=Msg("host", "topic")):
        x = sequential_pipeline([a, b], Msg("user", "go"))
        assert x.content == "b heard 2"           # b holds the topic and a's reply (input and broadcast, once)
    wait_until(lambda: len(a.memory.get_memory()) == 4)
    assert [m.content for m in a.memory.get_memory()] == ["topic", "go", "a heard 2", "b heard 2"]
