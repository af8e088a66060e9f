"""Streamed replies: generator methods stream their items as they are made, to whoever holds the stream."""
import asyncio
import os
import signal
import sys
import time

import pytest

from agentmesh import ReplyStream, errors
from conftest import wait_until
from sample_agents import Streamer


def at(launcher) -> dict:
    return {"host": "127.0.0.1", "port": launcher.port}


def test_a_generator_of_1000_items_streams_its_first_before_its_last_is_made(server):
    agent = Streamer("s", to_dist=at(server))
    stream = agent.count(1000, 0.002)
    assert isinstance(stream, ReplyStream)
    first = next(stream)
    made = agent.made_so_far()             # asked beside the running stream
    rest = list(stream)
    assert [first] + rest == list(range(1000))
    assert made < 1000, "the first item came only once the generator had finished"
    assert agent.made_so_far() == 1000


def test_an_async_generator_of_tokens_consumed_by_async_for(server):
    agent = Streamer("tokens", to_dist=at(server))

    async def main():
        return [token async for token in agent.tokens("the quick brown fox", 0.01)]

    assert asyncio.run(main()) == ["the", "quick", "brown", "fox"]


def test_a_stream_handed_to_an_agent_on_another_server_is_read_there(servers):
    s1, s2 = servers(capacity=8), servers(capacity=8)
    producer, consumer = Streamer("producer", to_dist=at(s1)), Streamer("consumer", to_dist=at(s2))
    assert consumer.consume(producer.count(50)) == list(range(50))
    assert consumer.consume_async(producer.tokens("a b c")).result() == ["a", "b", "c"]


def test_a_slow_reader_holds_the_generator_back_and_the_servers_memory_bounded(server):
    agent = Streamer("big", to_dist=at(server))
    before = agent.rss_mib()
    stream = agent.count(300, size=1 << 20)              # 300 MiB if it were all made at once
    assert len(next(stream)) == 1 << 20
    wait_until(lambda: agent.made_so_far() >= 16)
    held = agent.made_so_far()
    print(f"slow reader: the generator made {held} of 300 items", file=sys.stderr)
    deadline = time.monotonic() + 1.0
    wait_until(lambda: time.monotonic() > deadline or agent.made_so_far() > held + 8)
    # a window of 16 on the server, and a few in the sockets and the reader's buffer, no more
    assert agent.made_so_far() <= 40, "the generator ran ahead of its reader"
    assert agent.rss_mib() - before < 100
    assert sum(1 for _ in stream) == 299


def test_a_stream_broken_by_sigkill_says_how_many_items_arrived(server):
    agent = Streamer("doomed", to_dist=at(server))
    stream = agent.count(200, 0.02)
    got = [next(stream) for _ in range(5)]
    os.kill(server.pid, signal.SIGKILL)
    with pytest.raises(errors.StreamBrokenError) as broken:
        for item in stream:
            got.append(item)
    assert got == list(range(len(got))) and broken.value.items == len(got) < 200
    assert f"after {len(got)} item(s)" in str(broken.value) and f"127.0.0.1:{server.port}" in str(broken.value)


def test_a_stream_is_read_once_and_an_error_mid_stream_comes_after_the_items_made_before_it(server):
    agent = Streamer("once", to_dist=at(server))
    stream = agent.count(3)
    assert list(stream) == [0, 1, 2]
    assert list(stream) == []           # exhausted, as a generator is
    got = []
    with pytest.raises(errors.AgentCallError, match="ValueError: item 2 is bad"):
        for item in agent.fail_at(2):
            got.append(item)
    assert got == [0, 1]
    assert agent.made_so_far() == 3     # the agent is fine and free


def test_the_state_a_stream_leaves_is_checkpointed_and_survives_a_crash(server):
    agent = Streamer("kept", to_dist=at(server))
    assert list(agent.count(5)) == list(range(5))
    wait_until(lambda: agent._binding.checkpoint.seq >= 1)      # the stream's final reply brought the state
    os.kill(server.pid, signal.SIGKILL)
    assert agent.made_so_far() == 5                       # re-created elsewhere from that checkpoint
    assert agent.server != f"127.0.0.1:{server.port}"
