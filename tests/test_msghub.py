"""msghub and sequential_pipeline (AgentScope's orchestration) over real servers in real processes.

A hub's broadcast goes from the speaker's server straight to the listeners'
servers, told without waiting: the caller never sends an observe nor waits for
a placeholder to pass it on.
"""
from __future__ import annotations

import logging
import pickle
import time
from collections import Counter

import pytest

import agentmesh
from agentmesh import AgentBase, AsyncResult, Msg, RpcObject
from agentmesh._checkpoint import checkpoint_of
from agentmesh.msghub import MsgHubManager, msghub
from agentmesh.pipelines import SequentialPipeline, sequential_pipeline
from conftest import wait_until
from sample_agents import Sleeper


class Speaker(AgentBase):
    """Like AgentScope's DialogAgent: remembers its input and its own answer; may take its time."""

    def __init__(self, name: str, seconds: float = 0.0) -> None:
        super().__init__(name)
        self.seconds = seconds
        self.spoken = 0

    def reply(self, x=None):
        self.memory.add(x)
        time.sleep(self.seconds)
        self.spoken += 1
        msg = Msg(self.name, f"{self.name} says {self.spoken}")
        self.memory.add(msg)
        return msg

    def memory_ids(self) -> list:
        return [m.id for m in self.memory.get_memory()]

    def audience_ids(self):
        return None if "_audience" not in self.__dict__ else [a.agent_id for a in self._audience]


class Deaf(Speaker):
    def observe(self, x):
        raise RuntimeError("cannot hear a thing")


def at(launcher) -> dict:
    return {"host": "127.0.0.1", "port": launcher.port}


def settle(agent, expected: list) -> list:
    """The agent's memory (ids) once it holds as many messages as expected."""
    wait_until(lambda: len(agent.memory_ids()) >= len(expected))
    return agent.memory_ids()


def test_agentscopes_names():
    assert agentmesh.msghub is msghub and "msghub" in agentmesh.__all__   # as agentscope.msghub is the function
    from agentmesh import msghub as from_package

    assert from_package is msghub and isinstance(msghub([]), MsgHubManager)
    assert agentmesh.pipelines.sequential_pipeline is sequential_pipeline
    assert "_audience" not in vars(Speaker("quiet"))          # an agent outside a hub keeps its old state


def test_three_proxies_on_two_servers_hear_the_announcement_and_each_other(servers):
    s1, s2 = servers(capacity=8), servers(capacity=8)
    a, b, c = Speaker("a").to_dist(**at(s1)), Speaker("b").to_dist(**at(s2)), Speaker("c").to_dist(**at(s1))
    announcement = [Msg("host", "the topic"), Msg("host", "the rules")]
    with msghub([a, b, c], announcement=announcement):
        assert a.audience_ids() == [b.agent_id, c.agent_id] and b.audience_ids() == [a.agent_id, c.agent_id]
        x_a = a()
        x_b = b(x_a)
        x_c = c(x_b)
        assert x_c.content == "c says 1"
    ann = [m.id for m in announcement]
    # each: the announcement and all three replies, once (an input that is also broadcast is held once)
    expected = {agent: ann + [x_a.id, x_b.id, x_c.id] for agent in (a, b, c)}
    for agent, ids in expected.items():
        heard = settle(agent, ids)
        assert heard[:2] == ann and Counter(heard) == Counter(ids), (agent, heard)
    memory = b.memory.get_memory()                            # the memory itself, read through the proxy
    assert [m.name for m in memory] == ["host", "host", "a", "b", "c"]   # c spoke after b: b heard it last
    assert [p.audience_ids() for p in (a, b, c)] == [None, None, None]   # left the hub: audiences gone


def test_the_broadcast_goes_server_to_server_and_b_waits_for_a_without_deadlock(servers, monkeypatch):
    s1, s2 = servers(capacity=4), servers(capacity=4)
    a, b = Speaker("a", seconds=1.0).to_dist(**at(s1)), Speaker("b").to_dist(**at(s2))
    assert a.memory_ids() == b.memory_ids() == []
    sent, waited = [], []
    call, raw_value = RpcObject._call, AsyncResult._raw_value

    def counted_call(self, method, *rest):        # every call this process sends, by method
        sent.append(method)
        return call(self, method, *rest)

    def counted_wait(self, timeout):              # every result this process waits for, by call id
        waited.append(self.call_id)
        return raw_value(self, timeout)

    monkeypatch.setattr(RpcObject, "_call", counted_call)
    monkeypatch.setattr(AsyncResult, "_raw_value", counted_wait)
    with msghub([a, b]):
        sent.clear()
        x_a = a()
        x_b = b(x_a)                   # b's call waits on its server for a's reply, which a broadcasts to b
        assert not x_a.done()          # a is still thinking: its placeholder went to b pending
        wait_until(x_b.done)           # no deadlock: a told b without waiting for b's mailbox
        assert sent == ["__call__", "__call__"]     # nothing was broadcast from here
        heard = settle(b, [1, 2])      # a's reply (b's input and a's broadcast: held once) and b's own
        assert x_a.call_id not in waited   # the caller never waited for a's reply to pass it on
        assert Counter(heard) == Counter([x_a.id, x_b.id])
        assert Counter(settle(a, [1, 2])) == Counter([x_a.id, x_b.id])


def test_add_delete_and_leaving_the_hub(servers, caplog):
    s1, s2 = servers(capacity=8), servers(capacity=8)
    a = Speaker("a").to_dist(**at(s1))
    b, c = Speaker("b").to_dist(**at(s2)), Speaker("c").to_dist(**at(s2))   # one session from a's server: in order
    assert pickle.loads(pickle.dumps(b)) == b and hash(pickle.loads(pickle.dumps(b))) == hash(b) and b != c
    with caplog.at_level(logging.WARNING, logger="agentmesh"):
        with msghub([a, b]) as hub:
            x1 = a().id
            hub.add(c)
            hub.add([c])                                   # already in: skipped, with a warning
            assert c.audience_ids() == [a.agent_id, b.agent_id]
            x2 = a().id
            hub.delete(b)
            hub.delete(b)                                  # not in any more: skipped, with a warning
            assert b.audience_ids() is None and a.audience_ids() == [c.agent_id]
            x3 = a().id
            assert settle(c, [x2, x3]) == [x2, x3]         # joined after x1, still in for x3
        x4 = a().id                                        # after the hub: nobody hears it
    assert b.memory_ids() == [x1, x2]                      # gone before x3 (which c heard first, on one session)
    assert c.memory_ids() == [x2, x3]
    assert a.memory_ids() == [x1, x2, x3, x4]
    assert [p.audience_ids() for p in (a, b, c)] == [None, None, None]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name.startswith("agentmesh")]
    assert len(warnings) == 2 and "already joined" in warnings[0] and "cannot find agent b" in warnings[1]


def test_a_local_agent_and_two_proxies_in_one_hub(servers):
    s1, s2 = servers(capacity=4), servers(capacity=4)
    local = Speaker("local")
    p1, p2 = Speaker("p1", seconds=0.5).to_dist(**at(s1)), Speaker("p2").to_dist(**at(s2))
    hello = Msg("host", "hello")
    with msghub([local, p1, p2], announcement=hello):
        assert local._audience == [p1, p2] and p1.audience_ids() == [p2.agent_id]   # a server cannot reach local
        x_l = local()                   # runs here; the proxies are told
        x1 = p1(x_l)
        seen = local.memory.get_memory()
        assert seen[-1] is x1 and not x1.done()       # the local agent observes p1's reply as its placeholder
        x2 = p2(x1)
    assert [m.content for m in local.memory.get_memory()] == ["hello", "local says 1", "p1 says 1", "p2 says 1"]
    assert p1._local_audience is None and "_audience" not in vars(local)
    assert Counter(settle(p1, [1] * 4)) == Counter([hello.id, x_l.id, x1.id, x2.id])   # inputs also heard: once
    assert Counter(settle(p2, [1] * 4)) == Counter([hello.id, x_l.id, x1.id, x2.id])


def test_a_local_hub_checkpoints_as_before_once_left(caplog):
    a, b, c = Speaker("a"), Speaker("b"), Speaker("c")
    before = checkpoint_of(a)
    with msghub([a, b, c]) as hub:
        assert a._audience == [b, c] and checkpoint_of(a) != before
        hub.broadcast(Msg("host", "note"))
        a.memory.clear()
        a.rm_audience(c)
        with caplog.at_level(logging.WARNING, logger="agentmesh"):
            a.rm_audience([c])                          # not in it any more: a warning
        assert a._audience == [b] and "c is not in its audience" in caplog.text
        a()
    assert checkpoint_of(a) != before and a.memory.size() == 1
    a.memory.clear()
    a.spoken = 0                                       # what the call changed, undone: the rest is as it was
    assert checkpoint_of(a) == before
    assert [m.content for m in b.memory.get_memory()] == ["note", "a says 1"]
    assert [m.content for m in c.memory.get_memory()] == ["note"]


def test_a_failed_broadcast_is_logged_once_naming_the_agent(runtime, caplog):
    speaker, deaf = Speaker("speaker"), Deaf("deaf").to_dist()
    with caplog.at_level(logging.WARNING, logger="agentmesh"):
        with msghub([speaker, deaf]):
            assert speaker().content == "speaker says 1"     # the reply is not hurt by the failure
            wait_until(lambda: caplog.records)
        assert deaf.memory_ids() == []                   # called after the failed observe, in order
    (record,) = [r for r in caplog.records if r.name.startswith("agentmesh")]
    message = record.getMessage()
    assert record.levelno == logging.WARNING and record.name.startswith("agentmesh")
    assert "observe()" in message and "deaf" in message and deaf.agent_id in message
    assert "cannot hear a thing" in message


def test_sequential_pipeline_over_proxies_returns_a_placeholder_at_once(servers):
    s1, s2 = servers(capacity=4), servers(capacity=4)
    chain = [Sleeper(f"s{i}", seconds=0.4).to_dist(**at(s1 if i % 2 else s2)) for i in range(3)]
    assert [len(p.memory) for p in chain] == [0, 0, 0]    # created: the timing below is the pipeline's alone
    started = time.monotonic()
    out = sequential_pipeline(chain, Msg("user", 0))
    assert isinstance(out, AsyncResult) and not out.done()
    assert time.monotonic() - started < 0.3
    assert out.content == 3 and time.monotonic() - started >= 1.2
    again = SequentialPipeline(chain)
    assert again.participants == chain and again(Msg("user", 10)).content == 13


def test_sequential_pipeline_over_local_agents_and_functions():
    chain = [Sleeper("a", seconds=0), lambda m: Msg("f", m.content * 10), Sleeper("b", seconds=0)]
    assert sequential_pipeline(chain, Msg("user", 1)).content == 21
    assert SequentialPipeline(chain)(Msg("user", 2)).content == 31
    assert sequential_pipeline([lambda x: x is None]) is True     # x defaults to None
    with pytest.raises(ValueError, match="No operators"):
        sequential_pipeline([])
    with pytest.raises(ValueError):
        SequentialPipeline([])(Msg("user", 0))


def test_memory_holds_a_message_once_and_never_waits_to_add():
    from agentmesh.agents._memory import TemporaryMemory

    memory, first, second = TemporaryMemory(), Msg("a", "one"), Msg("b", "two")
    memory.add(first)
    memory.add([first, second, first])
    assert memory.get_memory() == [first, second]
    clone = pickle.loads(pickle.dumps(memory))
    clone.add(second)
    assert clone.size() == 2 and vars(clone).get("_ids") is not None
    memory.delete(0)
    memory.add(first)                                  # deleted, so it may come back
    assert memory.get_memory() == [second, first]


class Counting(AgentBase):
    """AgentScope's DemoRpcAgentWithMemory: answers with its memory's size after taking its input in."""

    def __init__(self, name: str, seconds: float = 0.0) -> None:
        super().__init__(name)
        self.seconds = seconds

    def reply(self, x=None):
        self.memory.add(x)
        msg = Msg(self.name, {"mem_size": self.memory.size()}, role="assistant")
        self.memory.add(msg)
        time.sleep(self.seconds)
        return msg


def test_a_broadcast_is_heard_before_a_call_that_waits_for_its_arguments(servers):
    s1, s2 = servers(capacity=8), servers(capacity=8)
    a, b, c = (Counting("a").to_dist(**at(s1)), Counting("b", seconds=0.5).to_dist(**at(s2)),
               Counting("c").to_dist(**at(s1)))
    participants = [a, b, c]
    with msghub(participants, announcement=[Msg("System", "Announcement 1"), Msg("System", "Announcement 2")]):
        x_a = a()
        x_b = b(x_a)
        x_c = c(x_b)    # waits on its server for x_b; a's broadcast, sent meanwhile, goes ahead of it
        assert [x.content["mem_size"] for x in (x_a, x_b, x_c)] == [2, 3, 4]
        x_a = a(x_c)
        x_b = b(x_a)
        x_c = c(x_b)
        assert [x.content["mem_size"] for x in (x_a, x_b, x_c)] == [5, 6, 7]
        assert sequential_pipeline(participants, x_c).content["mem_size"] == 10


def test_the_debate_example_runs_over_child_servers(procs):
    import subprocess

    from conftest import PYTHON

    proc = procs([PYTHON, "examples/debate/debate.py", "--rounds", "3"], stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 9 and lines[0].startswith('round 1 Pro: (yes, point 1) answering Moderator: "Topic:')
    assert lines[1].startswith("round 1 Con: (no, point 1) answering Pro:")
    assert lines[2] == "round 1 Judge: so far Pro made 1 point(s), Con 1"
    assert lines[3].startswith("round 2 Pro: (yes, point 2) answering Judge:")
    assert lines[8] == "round 3 Judge: so far Pro made 3 point(s), Con 3"
