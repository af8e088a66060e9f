"""Bad input at creation time: a creation over the message size limit, unknown to_dist()/init() options.

Each gets a clear error at once (naming what is wrong and what would be
right) and hurts nothing else: the server keeps serving, other agents
answer, the caller's dicts are left as they were.
"""
from __future__ import annotations

import copy
import logging
import pickle
import re
import time

import pytest

import agentmesh
from agentmesh import AgentBase
from agentmesh.errors import MessageTooLargeError
from agentmesh.rpc import DistConf, RpcClient, RpcObject
from agentmesh.rpc.retry_strategy import RetryFixedTimes
from conftest import server_info
from sample_agents import Echo

LIMIT = 1 << 20


def at(launcher, **options) -> dict:
    return {"host": "127.0.0.1", "port": launcher.port, **options}


def warnings_of(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING and record.name.startswith("agentmesh")]


def heavy_class() -> type:
    """A class only this process has (shipped by value), whose code carries 2 MiB."""
    class Heavy(AgentBase):
        ballast = b"\x07" * (2 * LIMIT)

        def ping(self, value=None):
            return value

    return Heavy


# -- 5. a creation over the message limit -------------------------------------------------
@pytest.mark.parametrize("whose", ["server", "client"])
@pytest.mark.parametrize("what", ["constructor arguments", "class by value"])
def test_a_creation_over_the_message_limit_fails_at_first_use_and_hurts_no_one(servers, runtime, caplog,
                                                                              whose, what):
    if whose == "client":      # the client's own limit: gRPC refuses the write locally
        runtime.configure(max_message_size=LIMIT)
        s = servers(capacity=8)
    else:                      # the server's limit, learnt from its Hello
        s = servers(capacity=8, max_message_size=LIMIT)
    bystander = Echo("bystander", to_dist=at(s))
    assert bystander.ping(1) == 1
    caplog.set_level(logging.INFO, logger="agentmesh")

    started = time.monotonic()
    if what == "constructor arguments":
        big = Echo("big", b"\x01" * (2 * LIMIT), to_dist=at(s, max_timeout_seconds=20))
    else:
        big = heavy_class()("heavy", to_dist=at(s, max_timeout_seconds=20))
    with pytest.raises(MessageTooLargeError) as info:
        big.ping(1)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f"{LIMIT}" in message and "max_message_size" in message and what in message
    size = re.search(r"its creation is (\d+) bytes", message)
    assert size is not None and int(size.group(1)) > 2 * LIMIT, message
    with pytest.raises(MessageTooLargeError):
        big.reply(None).result(timeout=5)   # later calls say the same, at once
    assert len(warnings_of(caplog)) <= 1, warnings_of(caplog)

    assert bystander.ping(2) == 2       # the same session and server go on
    assert Echo("after", to_dist=at(s)).ping(3) == 3
    assert not any("lost" in line for line in warnings_of(caplog))


def test_a_call_over_the_limit_sent_on_the_session_is_its_own_error_not_a_lost_server(servers, runtime, caplog):
    runtime.configure(max_message_size=LIMIT)
    s = servers(capacity=8)
    bystander = Echo("bystander", to_dist=at(s))
    assert bystander.ping(1) == 1
    caplog.set_level(logging.INFO, logger="agentmesh")
    client = RpcClient("127.0.0.1", s.port)    # its calls go on the same session, without a proxy's checks
    big = pickle.dumps({"args": (b"\x02" * (2 * LIMIT),), "kwargs": {}})
    with pytest.raises(MessageTooLargeError) as info:
        client.call_agent_func("ping", bystander.agent_id, big, timeout=10)
    assert f"{LIMIT}" in str(info.value) and "ping()" in str(info.value)
    assert bystander.ping(2) == 2
    assert pickle.loads(client.call_agent_func("ping", bystander.agent_id, pickle.dumps({"args": (3,)}))) == 3
    assert not warnings_of(caplog)
    assert not any("ended" in record.getMessage() for record in caplog.records)


# -- 15. unknown options ---------------------------------------------------------------------
def test_an_unknown_to_dist_option_is_a_type_error_naming_it_in_every_form(server):
    with pytest.raises(TypeError) as info:
        Echo("x").to_dist(host="127.0.0.1", port=server.port, bogus_option=3)
    message = str(info.value)
    assert "'bogus_option'" in message and "to_dist()" in message
    assert "labels" in message and "max_timeout_seconds" in message and "max_pool_size" in message

    with pytest.raises(TypeError, match=r"'lables' \(did you mean 'labels'\?\)"):
        Echo("x").to_dist(host="127.0.0.1", port=server.port, lables={"gpu": "1"})
    options = {"host": "127.0.0.1", "port": server.port, "lables": {"gpu": "1"}, "chekpoint": False}
    given = copy.deepcopy(options)
    with pytest.raises(TypeError) as info:
        Echo("x", to_dist=options)
    assert "'chekpoint' (did you mean 'checkpoint'?)" in str(info.value)
    assert "'lables' (did you mean 'labels'?)" in str(info.value)
    assert options == given
    with pytest.raises(TypeError, match="'lables'"):
        Echo("x", to_dist=DistConf(host="127.0.0.1", port=server.port, lables={"gpu": "1"}))
    with pytest.raises(TypeError, match="'lables'"):
        RpcObject(Echo, host="127.0.0.1", port=server.port, configs={"args": ("x",)}, lables={"gpu": "1"})
    assert server_info(server).agents == 0      # nothing was placed


def test_valid_to_dist_options_still_work_agentscopes_included(server):
    ported = Echo("ported").to_dist(host="127.0.0.1", port=server.port, max_pool_size=8192, max_expire_time=7200,
                                    max_timeout_seconds=30, local_mode=True, lazy_launch=False,
                                    retry_strategy=RetryFixedTimes(max_retries=2, delay=0.1))
    assert ported.ping(1) == 1
    options = {"host": "127.0.0.1", "port": server.port, "checkpoint": False, "max_pool_size": 16}
    given = dict(options)
    assert Echo("dict", to_dist=options).ping(2) == 2
    assert options == given
    assert Echo("conf", to_dist=DistConf(host="127.0.0.1", port=server.port)).ping(3) == 3


def test_an_unknown_init_option_is_a_type_error_naming_it_and_changes_nothing(runtime):
    before = runtime.settings
    with pytest.raises(TypeError) as info:
        agentmesh.init(max_mesage_size=LIMIT, connect_timeout=7.0)
    message = str(info.value)
    assert "agentmesh.init()" in message and "'max_mesage_size' (did you mean 'max_message_size'?)" in message
    assert "connect_timeout" in message and "metrics_port" in message and "model_configs" in message
    assert runtime.settings == before
    with pytest.raises(TypeError, match=r"'tracng' \(did you mean 'tracing'\?\)"):
        agentmesh.init(tracng=True)

    agentmesh.init(project="p", name="n", model_configs=[], save_log=False, use_monitor=False,
                   logger_level="INFO", connect_timeout=7.0)     # AgentScope's options, and ours
    assert runtime.settings.connect_timeout == 7.0
