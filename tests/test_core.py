"""The agent model, proxies and placeholders against real servers over real gRPC."""
import pickle
import threading
import time

import pytest

import agentmesh
from agentmesh import AsyncResult, Msg, RpcObject
from agentmesh.errors import AgentCallError, AgentCreationError, CapacityError, UnknownMethodError
from sample_agents import Echo, FanOut, Modes, Parallel2, Recorder, Relay, Sleeper, WithFunction


class CountingAgent(Echo):
    constructed = 0

    def __init__(self, name):
        type(self).constructed += 1
        super().__init__(name)


def test_four_forms(server):
    a = Echo("A").to_dist(host="127.0.0.1", port=server.port)
    b = Echo("B", to_dist={"host": "127.0.0.1", "port": server.port})
    c = Echo("C").to_dist()
    d = Echo("D", to_dist=True)
    for proxy, name in ((a, "A"), (b, "B"), (c, "C"), (d, "D")):
        assert isinstance(proxy, RpcObject)
        assert proxy.name == name
        assert proxy.reply(Msg("u", "hi")).content == {"count": 1, "got": "hi"}
    assert a.server == b.server == f"127.0.0.1:{server.port}"
    assert c.server.startswith("127.0.0.1:") and c.server != a.server


def test_to_dist_dict_not_mutated_and_no_local_construction(server):
    options = {"host": "127.0.0.1", "port": server.port}
    before = dict(options)
    CountingAgent.constructed = 0
    proxy = CountingAgent("X", to_dist=options)
    assert options == before
    assert CountingAgent.constructed == 0
    assert proxy.get_count() == 0


def test_async_returns_at_once_without_a_thread_per_call(server):
    agent = Echo("E").to_dist(host="127.0.0.1", port=server.port)
    threads_before = threading.active_count()
    start = time.monotonic()
    results = [agent.slow(0.1, i) for i in range(50)]   # run one after another: 5 s; submitted in far less
    submitted = time.monotonic() - start
    assert all(isinstance(r, AsyncResult) for r in results)
    assert submitted < 0.4, submitted
    assert threading.active_count() <= threads_before + 1
    assert [r.result() for r in results] == list(range(50))


def test_async_result_behaves_like_its_value(server):
    agent = Echo("E").to_dist(host="127.0.0.1", port=server.port)
    first = agent.reply(Msg("u", "x"))
    assert first.name == "E"
    assert first.content["count"] == 1
    value = first.result(timeout=5)
    assert isinstance(value, Msg)
    assert first == value and str(first) == str(value)
    assert agent.slow(0.0, 41) == 41
    assert agent.slow(0.0, [1, 2]) == [1, 2]


def test_result_timeout(server):
    agent = Echo("E").to_dist(host="127.0.0.1", port=server.port)
    pending = agent.slow(2.0, 1)
    with pytest.raises(TimeoutError):
        pending.result(timeout=0.1)
    assert pending.result() == 1


def test_pending_placeholder_pickles_and_resolves_on_its_own(server):
    agent = Echo("E").to_dist(host="127.0.0.1", port=server.port)
    pending = agent.slow(1.0, "late")
    data = pickle.dumps(pending)
    assert not pending.done()
    clone = pickle.loads(data)
    assert isinstance(clone, AsyncResult)
    assert clone.result(timeout=10) == "late"


def test_actor_order_and_max_concurrency(server):
    rec = Recorder("R").to_dist(host="127.0.0.1", port=server.port)
    results = [rec.record(i, 0.001) for i in range(200)]
    assert [r.result() for r in results] == list(range(200))
    assert rec.get_seen() == list(range(200))
    assert rec.get_peak() == 1
    par = Parallel2("P").to_dist(host="127.0.0.1", port=server.port)
    results = [par.record(i, 0.3) for i in range(4)]
    assert sorted(r.result() for r in results) == [0, 1, 2, 3]
    assert par.get_peak() == 2


def test_separate_state_per_agent_on_one_server(server):
    agents = [Echo(f"E{i}").to_dist(host="127.0.0.1", port=server.port) for i in range(3)]
    for i, agent in enumerate(agents):
        for _ in range(i + 1):
            agent.reply(Msg("u", i)).result()
    assert [a.get_count() for a in agents] == [1, 2, 3]
    assert len({a.pid() for a in agents}) == 1


def test_chain_of_three_returns_at_once_and_takes_three_seconds(server):
    a, b, c = (Sleeper(n, 1.0).to_dist(host="127.0.0.1", port=server.port) for n in "abc")
    start = time.monotonic()
    out = c(b(a(Msg("u", 0))))
    returned = time.monotonic() - start
    assert returned < 0.5, returned
    assert out.content == 3
    total = time.monotonic() - start
    assert 2.9 < total < 4.5, total


def test_fan_out_same_input_in_parallel(servers):
    s1 = servers(capacity=8)
    workers = [Sleeper(f"w{i}", 1.0).to_dist(host="127.0.0.1", port=s1.port) for i in range(3)]
    msg = Msg("u", 10)
    start = time.monotonic()
    outs = [w(msg) for w in workers]
    assert [o.content for o in outs] == [11, 11, 11]
    assert time.monotonic() - start < 2.0


def test_local_and_remote_agents_in_one_loop(server):
    agents = [Echo("local"), Echo("remote").to_dist(host="127.0.0.1", port=server.port)]
    msg = Msg("u", 0)
    for _ in range(3):
        for agent in agents:
            msg = agent(msg)
    assert msg.content["count"] == 3
    assert agents[0].count == 3 and agents[1].get_count() == 3


def test_proxies_as_constructor_arguments_fan_out_in_parallel(servers):
    s1, s2 = servers(capacity=8), servers(capacity=8)
    workers = [Sleeper(f"w{i}", 1.0).to_dist(host="127.0.0.1", port=s1.port) for i in range(3)]
    boss = FanOut("boss", workers, to_dist={"host": "127.0.0.1", "port": s2.port})
    start = time.monotonic()
    assert boss(Msg("u", 1)).content == [2, 2, 2]
    assert time.monotonic() - start < 2.0


def test_custom_sync_and_async_methods(server):
    agent = Modes("m").to_dist(host="127.0.0.1", port=server.port)
    later = agent.later(5)
    assert isinstance(later, AsyncResult)
    assert agent.now(5) == 15
    assert agent.plain(5) == 4
    assert later.result() == 10


def test_lambda_as_constructor_argument(server):
    agent = WithFunction("f", lambda v: v * 7).to_dist(host="127.0.0.1", port=server.port)
    assert agent(Msg("u", 6)).content == 42


def test_placeholders_passed_between_agents(servers):
    s1, s2 = servers(capacity=8), servers(capacity=8)
    a = Sleeper("a", 0.5).to_dist(host="127.0.0.1", port=s1.port)
    b = Relay("b").to_dist(host="127.0.0.1", port=s2.port)
    assert b(a(Msg("u", 1))).content == 3


def test_chain_of_200_agents_on_one_server_does_not_deadlock(servers):
    s = servers(capacity=256, max_workers=16)
    agents = [Relay(f"r{i}").to_dist(host="127.0.0.1", port=s.port) for i in range(200)]
    # Each call's argument is the previous agent's pending result; calls are made last-first
    # so that every agent is waiting before its input exists.
    msg = Msg("u", 0)
    for agent in agents:
        msg = agent(msg)
    assert msg.result(timeout=60).content == 200


def test_remote_error_carries_type_and_traceback(server):
    agent = Echo("E").to_dist(host="127.0.0.1", port=server.port)
    with pytest.raises(AgentCallError) as info:
        agent.boom("disk on fire")
    err = info.value
    assert err.remote_type == "ValueError"
    assert "disk on fire" in str(err)
    assert "in boom" in err.remote_traceback
    assert agent.ping(7) == 7  # the agent still serves


def test_unknown_method(server):
    agent = Echo("E").to_dist(host="127.0.0.1", port=server.port)
    with pytest.raises(UnknownMethodError):
        agent.no_such_method
    assert agent.ping(1) == 1


def test_creation_failure_and_capacity(servers):
    s = servers(capacity=2)
    from sample_agents import BrokenInit
    broken = BrokenInit("b", to_dist={"host": "127.0.0.1", "port": s.port})   # returns at once
    with pytest.raises(AgentCreationError, match="no model for this agent"):
        broken.reply(Msg("u", 1)).result()
    with pytest.raises(AgentCreationError, match="no model for this agent"):
        broken.get_count()
    one = Echo("1").to_dist(host="127.0.0.1", port=s.port)
    two = Echo("2").to_dist(host="127.0.0.1", port=s.port)
    three = Echo("3").to_dist(host="127.0.0.1", port=s.port)
    with pytest.raises(CapacityError, match="capacity 2"):
        three.ping(1)
    assert one.ping(1) == 1 and two.ping(2) == 2   # the server kept serving


def test_proxy_pickles_to_a_proxy_of_the_same_agent(server):
    agent = Echo("E").to_dist(host="127.0.0.1", port=server.port)
    agent.reply(Msg("u", 1)).result()
    clone = pickle.loads(pickle.dumps(agent))
    assert clone.agent_id == agent.agent_id and clone.server == agent.server
    assert clone.get_count() == 1


def test_shutdown_releases_this_process_agents(servers):
    from agentmesh.errors import UnknownAgentError
    from conftest import server_info, wait_until

    s = servers(capacity=4)
    agents = [Echo(f"E{i}").to_dist(host="127.0.0.1", port=s.port) for i in range(3)]
    assert [a.ping(i) for i, a in enumerate(agents)] == [0, 1, 2]
    assert server_info(s).agents == 3
    agentmesh.shutdown()
    wait_until(lambda: server_info(s).agents == 0)
    with pytest.raises(UnknownAgentError):
        agents[0].ping(1)
