"""AgentScope's RpcClient and proxy names, and the file root that replaces its download_file hole (issue 11)."""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import textwrap

import cloudpickle
import grpc
import pytest

import agentmesh
from agentmesh import Msg, RpcAgentServerLauncher
from agentmesh.agents import AgentBase
from agentmesh.errors import AgentCreationError, AuthenticationError, UnknownAgentError
from agentmesh.rpc import AsyncResult, RpcClient, RpcObject
from agentmesh.testing import fresh_runtime
from agentmesh.testing import wire as _wire
from agentmesh.v1 import agent_server_pb2 as pb
from agentmesh.v1 import agent_server_pb2_grpc as pb_grpc
from conftest import PYTHON, pid_alive, wait_until
from sample_agents import BrokenInit, Echo, Sleeper
from tls_helpers import TOKEN, certs, tls_server, tls_settings  # noqa: F401 - fixtures


class Remembering(AgentBase):
    """AgentScope's DemoRpcAgentWithMemory: remembers its input and its answer."""

    def reply(self, x=None):
        self.memory.add(x)
        answer = Msg(self.name, {"mem_size": self.memory.size()}, role="assistant")
        self.memory.add(answer)
        return answer


class Pointing(AgentBase):
    """Answers with a message naming a file on its server (AgentScope's FileAgent)."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path

    def reply(self, x=None):
        return Msg(self.name, "a file", url=self.path)

    def blocks(self):
        return Msg(self.name, [{"type": "image", "url": self.path}, {"type": "text", "text": "hi"}])


# -- RpcClient ---------------------------------------------------------------------------------------
def test_rpc_client_manages_a_server(servers):
    launcher = servers(custom_agent_classes=[Remembering])
    client = RpcClient("127.0.0.1", launcher.port)
    assert client.is_alive() and client.get_agent_list() == []
    info = client.get_server_info()
    assert info["pid"] == launcher.pid and info["id"] == launcher.server_id
    assert info["cpu"] >= 0 and 5 < info["mem"] < 4096          # MiB of a real Python process

    agent = Remembering("demo", to_dist={"host": "127.0.0.1", "port": launcher.port})
    agent(Msg("user", "first msg", role="user"))._fetch_result()
    memory = client.get_agent_memory(agent._oid)
    assert [m["content"] for m in memory] == ["first msg", {"mem_size": 1}]
    (listed,) = client.get_agent_list()
    assert (listed["agent_id"], listed["name"], listed["type"]) == (agent._oid, "demo", "Remembering")

    assert client.create_agent({"args": (), "kwargs": {"name": "custom"}, "class_name": "Remembering"},
                               agent_id="custom-1")
    existing = RpcObject(cls=Remembering, oid="custom-1", host="127.0.0.1", port=launcher.port,
                         connect_existing=True)
    assert existing(Msg("s", "hello")).content == {"mem_size": 1}
    raw = client.call_agent_func("reply", "custom-1", cloudpickle.dumps({"args": (Msg("s", "again"),)}))
    assert pickle.loads(raw).content == {"mem_size": 3}
    assert {a["agent_id"] for a in client.get_agent_list()} == {agent._oid, "custom-1"}

    assert client.delete_agent("custom-1") is True and client.delete_agent("custom-1") is False
    assert client.delete_all_agent() and client.get_agent_list() == []
    with pytest.raises(UnknownAgentError, match=agent._oid):
        agent(Msg("s", "after")).result()

    assert client.stop()
    wait_until(lambda: not pid_alive(launcher.pid), timeout=15)
    assert not client.is_alive() and client.get_server_info() == {}


def test_create_agent_says_what_was_wrong(servers):
    launcher = servers(custom_agent_classes=[Remembering])
    client = RpcClient("127.0.0.1", launcher.port)
    with pytest.raises(AgentCreationError, match="Nope is not hosted here.*Remembering"):
        client.create_agent({"class_name": "Nope", "args": (), "kwargs": {}})
    with pytest.raises(ValueError, match="class_name"):
        client.create_agent({"args": ()})
    with pytest.raises(AgentCreationError, match="TypeError"):    # the constructor's own error
        client.create_agent({"class_name": "Remembering", "kwargs": {"nonsense": 1}})
    assert client.is_alive() and client.get_agent_list() == []


def test_rpc_client_authenticates_over_mutual_tls(servers, tls_settings, certs):
    launcher = tls_server(servers, certs, mutual=True, token=TOKEN, custom_agent_classes=[Remembering])
    tls_settings(tls_ca=certs["ca.crt"], tls_cert=certs["client.crt"], tls_key=certs["client.key"], token=TOKEN)
    client = RpcClient("127.0.0.1", launcher.port)
    assert client.is_alive() and client.get_server_info()["id"] == launcher.server_id
    with fresh_runtime(tls_ca=certs["ca.crt"], tls_cert=certs["client.crt"], tls_key=certs["client.key"],
                       token="not-Qz8Xw2Ev5Rb9Tn3Ym6Uk1Ic4Oh7Pl0As") as wrong:
        impostor = RpcClient("127.0.0.1", launcher.port, runtime=wrong)
        assert not impostor.is_alive()
        with pytest.raises(AuthenticationError):
            impostor.get_agent_list()
        with pytest.raises(AuthenticationError):
            impostor.stop()
    assert client.is_alive()


def test_a_server_hosts_the_classes_of_its_agent_dir(servers, tmp_path):
    (tmp_path / "custom_agent.py").write_text(textwrap.dedent("""
        from agentmesh.agents import AgentBase
        from agentmesh.message import Msg

        class CustomAgent(AgentBase):
            def reply(self, x=None):
                return Msg(self.name, "Hello world", role="assistant")
    """))
    launcher = servers(agent_dir=str(tmp_path))
    client = RpcClient("127.0.0.1", launcher.port)
    assert any(name.endswith(":CustomAgent") for name in client.get_server_info()["classes"])
    assert client.create_agent({"args": (), "kwargs": {"name": "custom"}, "class_name": "CustomAgent"},
                               agent_id="custom_test")
    proxy = RpcObject(cls=AgentBase, oid="custom_test", host="127.0.0.1", port=launcher.port, connect_existing=True)
    answer = proxy(Msg("sys", "Hello", role="user"))
    assert (answer.name, answer.content) == ("custom", "Hello world")


# -- files ------------------------------------------------------------------------------------------
@pytest.fixture
def file_root(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    (root / "image.png").write_bytes(os.urandom(1_300_000))      # several chunks
    (tmp_path / "secret.txt").write_text("not for callers")
    (root / "link").symlink_to(tmp_path / "secret.txt")
    return root


def test_a_reply_naming_a_file_in_the_root_arrives_with_a_local_copy(servers, file_root, tmp_path):
    launcher = servers(file_dir=str(file_root))
    original = str(file_root / "image.png")
    with fresh_runtime(download_dir=str(tmp_path / "here")):
        agent = Pointing("File", original).to_dist(host="127.0.0.1", port=launcher.port)
        answer = agent()
        assert answer.url != original and answer.url.startswith(str(tmp_path / "here"))
        with open(answer.url, "rb") as copy, open(original, "rb") as served:
            assert copy.read() == served.read()
        blocks = agent.blocks()          # AgentScope 0.1.6's content blocks carry urls too
        assert blocks.content[0]["url"].startswith(str(tmp_path / "here")) and blocks.content[1] == {
            "type": "text", "text": "hi"}
        outside = Pointing("Other", str(tmp_path / "secret.txt")).to_dist(host="127.0.0.1", port=launcher.port)
        assert outside().url == str(tmp_path / "secret.txt")          # not in the root: left alone


def test_the_file_root_confines_every_path(servers, file_root, tmp_path):
    launcher = servers(file_dir=str(file_root))
    client = RpcClient("127.0.0.1", launcher.port)
    assert open(client.download_file(str(file_root / "image.png")), "rb").read()[:64] == \
        (file_root / "image.png").read_bytes()[:64]
    assert client.download_file("image.png")                        # relative to the root
    for escape in (str(tmp_path / "secret.txt"), "../secret.txt", str(file_root / "link"), "/etc/passwd", ""):
        with pytest.raises(FileNotFoundError, match="outside this server's file root|no file path"):
            client.download_file(escape)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        client.download_file(str(file_root / "missing.png"))
    with pytest.raises(FileNotFoundError, match="serves no files"):
        RpcClient("127.0.0.1", servers().port).download_file(str(file_root / "image.png"))
    assert client.is_alive()


def test_downloading_needs_the_token(servers, file_root):
    launcher = servers(file_dir=str(file_root), token=TOKEN)
    with grpc.insecure_channel(f"127.0.0.1:{launcher.port}") as channel:
        stub = pb_grpc.AgentServerStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.DownloadFile(pb.FileRequest(path="image.png"), metadata=_wire.call_metadata(),
                                   timeout=5))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        chunks = list(stub.DownloadFile(pb.FileRequest(path="image.png"),
                                        metadata=_wire.authenticate(channel, TOKEN), timeout=5))
    assert b"".join(c.data for c in chunks) == (file_root / "image.png").read_bytes()
    assert len(chunks) > 1 and chunks[0].size == 1_300_000


def test_a_file_root_that_is_not_a_folder_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="file_dir .*is not a folder"):
        RpcAgentServerLauncher(host="127.0.0.1", file_dir=str(tmp_path / "nowhere"))
    out = subprocess.run([PYTHON, "-m", "agentmesh.cli", "server", "--file-dir", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "nowhere" in out.stderr and "is not a folder" in out.stderr


# -- AgentScope's names on proxies, placeholders and messages ------------------------------------------
def test_proxies_and_placeholders_answer_to_agentscopes_names(servers):
    launcher = servers(custom_agent_classes=[Remembering, Echo])
    local = Remembering("a")
    oid = local._oid
    first = local.to_dist(host="127.0.0.1", port=launcher.port)
    assert first._oid == oid and (first.host, first.port) == ("127.0.0.1", launcher.port)
    assert first.client.get_agent_list()[0]["agent_id"] == oid
    first._check_created()

    pending = first(Msg("s", "one"))
    assert isinstance(pending, AsyncResult) and not pending._ready
    assert pending.update_value() is pending and pending._ready and pending["content"] == {"mem_size": 1}

    second = Remembering("a", to_dist={"host": "127.0.0.1", "port": launcher.port})
    repointed = Remembering("a").to_dist(host="127.0.0.1", port=launcher.port)
    repointed._oid = first._oid                      # now the same agent: it shares first's memory
    assert second(Msg("s", "x")).content == {"mem_size": 1}
    assert repointed(Msg("s", "y")).content == {"mem_size": 3}
    assert first(Msg("s", "z")).content == {"mem_size": 5}

    broken = BrokenInit("b", to_dist={"host": "127.0.0.1", "port": launcher.port})
    with pytest.raises(AgentCreationError, match="constructor"):
        broken._check_created()
    failing = Sleeper("s", 0.0, to_dist={"host": "127.0.0.1", "port": launcher.port})(Msg("s", "not a number"))
    with pytest.raises(agentmesh.AgentCallError, match="TypeError"):
        failing._fetch_result()

    msg = Msg("System", {"text": "test"}, role="system")
    assert msg.formatted_str() == "System: {'text': 'test'}" and msg["name"] == "System"
    with pytest.raises(KeyError):
        msg["nothing"]


def test_init_makes_agentscopes_save_dir_and_keeps_files_there(tmp_path):
    from agentmesh.utils.common import _find_available_port

    assert 0 < _find_available_port() < 65536
    with fresh_runtime() as runtime:
        agentmesh.init(project="test", name="rpc_agent", save_dir=str(tmp_path / "runs"), save_log=True)
        assert (tmp_path / "runs").is_dir()
        assert runtime.settings.download_dir == str(tmp_path / "runs" / "files")
    shutil.rmtree(tmp_path / "runs")


def test_the_server_command_takes_agentscopes_start_options_and_stops_when_asked(procs, file_root, tmp_path):
    from test_launcher import _start_cli

    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "greeter.py").write_text(textwrap.dedent("""
        from agentmesh.agents import AgentBase

        class Greeter(AgentBase):
            def reply(self, x=None):
                return "hello " + x
    """))
    proc, port = _start_cli(procs, "--port", "-1", "--server-id", "as-server-1", "--agent-dir", str(agents),
                            "--file-dir", str(file_root))
    client = RpcClient("127.0.0.1", port)
    info = client.get_server_info()
    assert (info["id"], info["pid"], info["file_dir"]) == ("as-server-1", proc.pid, str(file_root))
    assert client.create_agent({"class_name": "Greeter", "kwargs": {"name": "g"}}, agent_id="g1")
    assert RpcObject(AgentBase, "g1", "127.0.0.1", port, connect_existing=True)("you").result() == "hello you"
    assert client.stop()
    assert proc.wait(15) == 0          # a deliberate stop exits cleanly
