"""AgentScope 0.1.6 names that port by renaming: exceptions, retry strategies, DistConf, waiting for results."""
from __future__ import annotations

import pickle
import time

import pytest

import agentmesh
from agentmesh.rpc import AsyncResult, DistConf, RetryBase, RetryExponential, RetryFixedTimes
from agentmesh.rpc import retry_strategy, rpc_config
from sample_agents import Echo
from conftest import MESH_TOKEN


def test_the_exception_module_has_agentscopes_names():
    from agentmesh.exception import (AgentCallError, AgentCreationError, AgentServerError,
                                     AgentServerNotAliveError, AgentServerUnsupportedMethodError)

    assert AgentCallError is agentmesh.errors.AgentCallError
    assert AgentCreationError is agentmesh.errors.AgentCreationError
    for error in (AgentCallError, AgentCreationError, AgentServerNotAliveError, AgentServerUnsupportedMethodError):
        assert issubclass(error, AgentServerError)
    assert AgentServerNotAliveError is agentmesh.errors.ServerUnavailableError


class Flaky:
    """Fails the first n calls, then answers."""

    def __init__(self, failures: int, error: type[Exception] = TimeoutError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self, value):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return value


def test_retry_strategies_retry_then_give_up_with_timeout_error():
    fixed = RetryFixedTimes(max_retries=3, delay=0.01)
    assert fixed.retry(Flaky(3), "ok") == "ok"
    flaky = Flaky(10)
    with pytest.raises(TimeoutError):
        fixed(flaky, "never")
    assert flaky.calls == 4                                  # the first try and 3 retries
    unexpected = Flaky(1, KeyError)
    with pytest.raises(KeyError):                            # not the expected kind: raised at once
        fixed.retry(unexpected, 1, expect_exception_type=TimeoutError)
    assert unexpected.calls == 1

    backoff = RetryExponential(max_retries=4, base_delay=0.01, max_delay=0.03)
    for attempt, pause in ((1, 0.01), (2, 0.02), (3, 0.03), (9, 0.03)):   # doubling, capped by max_delay
        assert 0.5 * pause <= backoff.delay_before(attempt) <= 1.5 * pause
    assert backoff.retry(Flaky(4), 7) == 7


def test_an_exponential_pause_never_exceeds_max_delay():
    """The cap comes after the jitter, as AgentScope's: its test_retry_strategy bounds (3.5-6.5 s) always hold."""
    backoff = RetryExponential(max_retries=3, base_delay=1, max_delay=2)
    totals = []
    for _ in range(20_000):
        pauses = [backoff.delay_before(attempt) for attempt in (1, 2, 3)]
        assert all(pause <= 2 for pause in pauses), pauses
        assert 0.5 <= pauses[0] <= 1.5 and 1 <= pauses[1] <= 2 and pauses[2] == 2, pauses
        totals.append(sum(pauses))
    assert 3.5 <= min(totals) and max(totals) <= 6.5, (min(totals), max(totals))
    assert max(totals) - min(totals) > 1.5          # still jittered: the first two pauses spread out


def test_retry_strategies_from_their_dict_form():
    spec = {"type": "exponential", "max_retries": 2, "base_delay": 1, "max_delay": 4}
    strategy = RetryBase.load_dict(spec)
    assert isinstance(strategy, RetryExponential) and strategy.max_delay == 4
    assert spec["type"] == "exponential"                     # the caller's dict is left as it was
    assert isinstance(RetryBase.load_dict({"type": "fixed", "max_retries": 1, "delay": 0}), RetryFixedTimes)
    with pytest.raises(NotImplementedError, match="unknown retry strategy type 'linear'"):
        RetryBase.load_dict({"type": "linear"})
    with pytest.raises(ValueError, match="max_retries"):
        RetryFixedTimes(max_retries=-1)
    assert retry_strategy.retry_strategy_of(None) is None


def test_dist_conf_is_a_dict_with_agentscopes_arguments():
    conf = DistConf(host="127.0.0.1", port=12345, max_timeout_seconds=7)
    assert isinstance(conf, dict) and rpc_config.DistConf is DistConf
    assert conf == {"host": "127.0.0.1", "port": 12345, "max_pool_size": 8192, "max_expire_time": 7200,
                    "max_timeout_seconds": 7, "local_mode": True}
    assert pickle.loads(pickle.dumps(conf)) == conf


def test_dist_conf_without_a_port_places_the_agent_and_max_timeout_bounds_a_sync_call(runtime):
    agent = Echo("d", to_dist=DistConf(max_timeout_seconds=0.5))   # no port: a child server, as AgentScope
    assert agent.ping(3) == 3
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        agent.sync_slow(3)                     # a sync method that runs longer than one wait may last
    assert time.monotonic() - started < 2.5


def test_the_retry_strategy_decides_how_often_to_wait_again(runtime):
    patient = Echo("p").to_dist(max_timeout_seconds=0.2, retry_strategy={"type": "fixed", "max_retries": 20,
                                                                          "delay": 0.01})
    assert patient.slow(1.0, "late").result() == "late"           # 5+ waits of 0.2 s, then the value
    impatient = Echo("i").to_dist(max_timeout_seconds=0.2, retry_strategy=RetryFixedTimes(max_retries=1,
                                                                                          delay=0.01))
    pending = impatient.slow(2.0, "too late")
    assert isinstance(pending, AsyncResult)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        pending.result()                                          # 2 waits of 0.2 s, then it gives up
    assert time.monotonic() - started < 1.5
    assert pending.result(timeout=5) == "too late"                 # an explicit timeout overrides the policy
    copy = pickle.loads(pickle.dumps(impatient))                   # a copied proxy keeps the policy
    assert copy._timeout == 0.2 and repr(copy._retry) == repr(impatient._retry)
    unbounded = Echo("u").to_dist()
    assert unbounded.slow(0.3, "waited").result() == "waited"     # no options: wait as long as the call runs


# -- identity, ports, capacity and bad arguments ------------------------------------------
def test_to_dist_keeps_the_local_agents_id(runtime):
    local = Echo("same")
    remote = local.to_dist()
    assert remote.agent_id == local.agent_id
    assert remote.ping("x") == "x"


def test_auto_ports_and_bad_ports(servers):
    for auto in (None, -1, 0):
        launcher = servers(port=auto, capacity=2)
        assert 0 < launcher.port <= 65535
    taken = launcher.port
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken}: the port is in use"):
        agentmesh.RpcAgentServerLauncher(host="127.0.0.1", port=taken).launch(in_subprocess=False)
    for bad in (99999, -5, 65536, "http"):
        with pytest.raises(ValueError, match="port"):
            agentmesh.RpcAgentServerLauncher(host="127.0.0.1", port=bad)
    for bad in (0, -1, "8", 2.5):
        with pytest.raises(ValueError, match="capacity"):
            agentmesh.RpcAgentServerLauncher(host="127.0.0.1", capacity=bad)


def test_a_launcher_with_default_arguments_takes_200_agents(servers):
    launcher = servers()
    agents = [Echo(f"a{i}").to_dist(host="127.0.0.1", port=launcher.port) for i in range(200)]
    assert [a.ping(i) for i, a in enumerate(agents)][-1] == 199


def test_a_registry_url_that_is_not_etcd_is_refused_at_once(runtime):
    before = runtime.settings
    for bad in ("http://nonsense", "nonsense", "etcd://", "etcd://host:99999"):
        with pytest.raises(ValueError, match="registry URL"):
            agentmesh.init(registry=bad, token=MESH_TOKEN)
        with pytest.raises(ValueError, match="registry URL"):
            agentmesh.RpcAgentServerLauncher(host="127.0.0.1", registry=bad, token=MESH_TOKEN)
    assert runtime.settings == before


@pytest.mark.parametrize("argv, words", [
    (["--port", "99999"], "outside 1-65535"), (["--port", "-5"], "outside 1-65535"),
    (["--capacity", "-1"], "not a positive number"), (["--capacity", "0"], "not a positive number"),
    (["--registry", "http://nonsense"], "expected etcd://"),
])
def test_the_server_command_refuses_bad_arguments_before_it_listens(argv, words):
    import subprocess

    from conftest import PYTHON, ROOT

    done = subprocess.run([PYTHON, "-m", "agentmesh.cli", "server", *argv], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)
    assert done.returncode == 2 and words in done.stderr and argv[1] in done.stderr, done.stderr
    assert "listening" not in done.stderr


def test_a_deliberate_shutdown_without_registry_ends_its_agents_quietly(servers, caplog):
    import logging

    launcher = servers(capacity=100)
    agents = [Echo(f"s{i}").to_dist(host="127.0.0.1", port=launcher.port) for i in range(50)]
    assert [a.ping(i) for i, a in enumerate(agents)][-1] == 49
    with caplog.at_level(logging.INFO, logger="agentmesh"):
        launcher.shutdown()
        for agent in agents:
            with pytest.raises(agentmesh.errors.ServerUnavailableError, match=f"ended with agent server "
                                                                              f"{launcher.address}"):
                agent.ping(0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text   # not 50 warnings
    assert not [r for r in caplog.records if " moved from " in r.getMessage()]


def test_shipping_a_class_by_value_is_not_logged_as_a_move(servers, caplog):
    import logging

    from agentmesh import AgentBase

    class Local(AgentBase):       # defined here: the server cannot import it, so its class is shipped by value
        def twice(self, x):
            return 2 * x

    launcher = servers(capacity=10)
    with caplog.at_level(logging.INFO, logger="agentmesh"):
        agents = [Local(f"l{i}").to_dist(host="127.0.0.1", port=launcher.port) for i in range(3)]
        assert [a.twice(i) for i, a in enumerate(agents)] == [0, 2, 4]
    assert not [r.getMessage() for r in caplog.records if "moved" in r.getMessage() or r.levelno >= logging.WARNING]


def test_an_interleaving_method_runs_while_a_long_call_runs(servers):
    from sample_agents import Worker

    launcher = servers(capacity=4)
    worker = Worker("w").to_dist(host="127.0.0.1", port=launcher.port)
    assert worker.status() == 0
    from conftest import server_info, wait_until

    long_call = worker.work(1.5)
    wait_until(lambda: server_info(launcher).inflight >= 1)   # work() is running
    started = time.monotonic()
    assert worker.status() == 0                      # answered at once, while work() runs
    assert time.monotonic() - started < 1.0
    assert not long_call.done()
    assert worker.ordered_status() == 1              # an ordinary call waits its turn, after work()
    assert long_call.result() == 1
    assert worker.status() == 1
