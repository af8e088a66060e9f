"""ServerConfig: one typed config per server, built by the launcher (and the CLI, and child mode), its secrets
kept out of its repr, and carried whole to a server process over its stdin pipe."""
from __future__ import annotations

import io
import pickle
import struct
import sys

import pytest

from agentmesh import RpcAgentServerLauncher, _codec
from agentmesh._process import Handover, read_config
from agentmesh._tokens import local_token
from agentmesh.server import OwnCalls, ServerConfig
from sample_agents import Echo

TOKEN = "tok-Wm4Zq8Xr1Tc6Vb3Nk9Jh2Lf5Gd7Sp0Ay"
PASSWORD = "etcd-password-Qx7Lm2"


def test_its_repr_shows_no_secret():
    config = ServerConfig(token=TOKEN, own_calls=OwnCalls(token=TOKEN, etcd_password=PASSWORD))
    assert config.token == TOKEN
    assert TOKEN not in repr(config) and PASSWORD not in repr(config)


def test_its_token_is_resolved_when_it_is_built():
    assert ServerConfig(bind_host="127.0.0.1").token == local_token()     # loopback: this user's own
    assert ServerConfig(bind_host="0.0.0.0").token is None                 # the network: none made up
    assert ServerConfig(registry="etcd://127.0.0.1:2379").token is None    # a registry needs the namespace's
    with pytest.raises(ValueError, match="refused"):
        ServerConfig(token="short")


def test_the_launcher_builds_it_once(runtime):
    launcher = RpcAgentServerLauncher(host="127.0.0.1", port=0, capacity=7, custom_agent_classes=[Echo],
                                      namespace="ns1", token=TOKEN, max_results=10, server_id="s-1",
                                      agentscope_only_option=True)
    config = launcher.config
    assert (config.bind_host, config.port, config.capacity, config.namespace) == ("127.0.0.1", 0, 7, "ns1")
    assert (config.agent_classes, config.token, config.max_results, config.server_id) == ((Echo,), TOKEN, 10, "s-1")
    assert (launcher.token, launcher.namespace, launcher.capacity) == (TOKEN, "ns1", 7)


def test_a_server_process_reads_it_typed_from_its_pipe():
    """What ServerProcess writes on the child's stdin: the config (classes pickled by value apart), sys.path."""
    handover = Handover(ServerConfig(token=TOKEN, capacity=3, roster="/tmp/roster"), _codec.dumps([Echo]),
                        list(sys.path), 5)
    blob = pickle.dumps(handover)
    read, ready_fd = read_config(io.BytesIO(struct.pack("!Q", len(blob)) + blob))
    assert ready_fd == 5
    assert isinstance(read, ServerConfig)
    assert (read.token, read.capacity, read.roster, read.server_id) == (TOKEN, 3, "/tmp/roster",
                                                                         handover.config.server_id)
    assert [cls.__qualname__ for cls in read.agent_classes] == ["Echo"]
