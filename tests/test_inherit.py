"""What processes agentmesh starts inherit, and what a process re-attaching to an agent gets.

Child and launched servers get the credentials of the settings they inherit
(the variables `agentmesh registry up` prints, or `init()`), a proxy
re-attached with ``connect_existing=True`` follows its agent after a crash,
and ``--agent-dir`` names the file that breaks its import.
"""
from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time

import pytest

from agentmesh._config import ENVIRONMENT
from agentmesh.discovery import keys
from agentmesh.errors import AgentCallError
from agentmesh.rpc import RpcObject
from agentmesh.testing import free_port
from conftest import MESH_TOKEN, PYTHON, etcd_get_prefix, pid_alive, wait_until
from sample_agents import Echo

#: a script's agent in child mode: its count after one call, and whether its server is a child of the script
CHILD_AGENT = textwrap.dedent("""
    import os
    import agentmesh
    from sample_agents import Echo

    def parent_of(pid):
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])

    agentmesh.init()
    agent = Echo("c").to_dist()
    print(agent.reply(1).content["count"], parent_of(agent.pid()) == os.getpid(), flush=True)
""")


def only(variables: dict[str, str]) -> dict[str, str]:
    """An environment with these AGENTMESH_* settings and no other (empty counts as unset)."""
    return {**{name: "" for name in ENVIRONMENT.values()}, **variables}


def run(procs, args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    """Run a script to its end (killed by PID if it hangs); its stdout, after checking it exited 0."""
    proc = procs(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]     # no child server died on the way either
    return out


def test_child_mode_works_when_the_registry_is_down(dev_registry, procs):
    env = {**only(dev_registry.environment()), "AGENTMESH_REGISTRY": f"etcd://root@127.0.0.1:{free_port()}"}
    assert run(procs, [PYTHON, "-c", CHILD_AGENT], env).split() == ["1", "True"]


def test_an_empty_namespace_goes_to_child_servers_whose_own_calls_follow_the_registry(dev_registry, procs):
    """The child server inherits the registry with its token and etcd password: an agent there places a new
    agent through the registry once a server is registered."""
    script = CHILD_AGENT + textwrap.dedent("""
        from agentmesh import AgentBase, RpcAgentServerLauncher

        class Spawner(AgentBase):
            def spawn(self):
                return Echo("inner").to_dist().server

        spawner = Spawner("s").to_dist()
        launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=4)    # now the namespace has a server
        launcher.launch()
        print(spawner.spawn() == launcher.address, flush=True)
        agentmesh.shutdown()
        launcher.shutdown()
    """)
    out = run(procs, [PYTHON, "-c", script], {**only(dev_registry.environment()), "AGENTMESH_NAMESPACE": "empty"})
    assert out.split() == ["1", "True", "True"]


def test_a_full_registry_falls_back_to_child_mode_and_launched_servers_register(dev_registry, procs):
    script = textwrap.dedent("""
        import agentmesh
        from agentmesh import RpcAgentServerLauncher
        from sample_agents import Echo

        agentmesh.init()
        launcher = RpcAgentServerLauncher(host="127.0.0.1", capacity=1)    # the registry's only server
        launcher.launch()
        first, second = Echo("first").to_dist(), Echo("second").to_dist()
        print(first.server == launcher.address, second.server != launcher.address, flush=True)
        print(first.reply(1).content["count"], second.reply(1).content["count"], flush=True)
        agentmesh.shutdown()
        launcher.shutdown()
    """)
    out = run(procs, [PYTHON, "-c", script], {**only(dev_registry.environment()), "AGENTMESH_NAMESPACE": "tiny"})
    assert out.split() == ["True", "True", "1", "1"]


def test_the_debate_example_runs_in_an_empty_namespace_of_the_dev_registry(dev_registry, procs):
    env = {**only(dev_registry.environment()), "AGENTMESH_NAMESPACE": "empty"}
    lines = run(procs, [PYTHON, "examples/debate/debate.py", "--rounds", "1"], env).splitlines()
    assert [line.split(":")[0] for line in lines] == ["round 1 Pro", "round 1 Con", "round 1 Judge"]


#: the owner of an agent: creates it through the registry, says where, then answers "count" until stdin ends
OWNER = textwrap.dedent("""
    import sys
    import agentmesh
    from sample_agents import Echo

    agentmesh.init()
    agent = Echo("owned").to_dist()
    assert agent.reply(1).content["count"] == 1
    print(agent.agent_id, agent.host, agent.port, flush=True)
    for line in sys.stdin:
        print(agent.get_count(), flush=True)
""")


def test_a_reattached_proxy_follows_its_agent_after_a_crash(mesh, namespace, servers, procs):
    """Servers on the launcher's default host (their records say localhost), the proxy re-attached by IP: it
    finds the agent's new home by the lost server's id, not by how the address was spelt."""
    hosts = [servers(host="localhost", capacity=8, registry=mesh.url, namespace=namespace, registry_ttl=2)
             for _ in range(2)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 2)
    owner = procs([PYTHON, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                  env=only({"AGENTMESH_REGISTRY": mesh.url, "AGENTMESH_NAMESPACE": namespace,
                            "AGENTMESH_TOKEN": MESH_TOKEN}))
    agent_id, host, port = owner.stdout.readline().split()
    assert host == "localhost"
    proxy = RpcObject(Echo, agent_id, "127.0.0.1", int(port), connect_existing=True)
    assert proxy.reply(2).content["count"] == 2
    owner.stdin.write("count\n")
    owner.stdin.flush()
    assert owner.stdout.readline().strip() == "2"     # the owner holds the checkpoint of the re-attached call
    victim, = (h for h in hosts if h.port == int(port))
    survivor, = (h for h in hosts if h is not victim)
    os.kill(owner.pid, signal.SIGSTOP)               # the owner is slow to move the agent: the record lags
    try:
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(victim.pid))
        answer = proxy.reply(3)                      # meanwhile the record still names the lost server
        wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 1, timeout=15)
    finally:
        os.kill(owner.pid, signal.SIGCONT)
    start = time.monotonic()
    assert answer.content["count"] == 3              # the agent's state, from its new home
    took = time.monotonic() - start
    assert proxy.server == f"localhost:{survivor.port}"
    assert took < 5.0, f"the re-attached proxy took {took:.1f} s to find its agent"
    owner.stdin.close()
    assert owner.wait(30) == 0


def test_a_proxy_that_cannot_read_the_registry_says_so_at_once(dev_registry, procs, runtime):
    """No etcd password here: failover says the registry refused to be read, not "no record" 10 s later."""
    owner_script = OWNER.replace('agentmesh.init()', 'agentmesh.init()\n'
                                 'launcher = agentmesh.RpcAgentServerLauncher(host="127.0.0.1")\n'
                                 'launcher.launch()').replace("agent.port, flush=True", "agent.port, launcher.pid, "
                                                                                         "flush=True")
    owner = procs([PYTHON, "-c", owner_script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                  env={**only(dev_registry.environment()), "AGENTMESH_NAMESPACE": "blind"})
    agent_id, host, port, server_pid = owner.stdout.readline().split()
    runtime.configure(registry=dev_registry.url, namespace="blind", token_file=str(dev_registry.token_file))
    proxy = RpcObject(Echo, agent_id, host, int(port), connect_existing=True)
    assert proxy.reply(2).content["count"] == 2
    os.kill(int(server_pid), signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(AgentCallError, match=r"could not be moved: registry etcd://root@\S+ refused to be read"):
        proxy.reply(3).content
    assert time.monotonic() - start < 5.0
    owner.stdin.close()
    assert owner.wait(30) == 0


GREETER = textwrap.dedent("""
    from agentmesh.agents import AgentBase

    class Greeter(AgentBase):
        def reply(self, x=None):
            return "hello " + x
""")
#: a driver without a __main__ guard: imported by a server, it parses the server's argv and exits 2
DRIVER = textwrap.dedent("""
    import argparse

    parser = argparse.ArgumentParser(prog="driver")
    parser.add_argument("topic")
    args = parser.parse_args()
""")


def test_agent_dir_names_a_driver_that_runs_at_import_and_skips_one_named_with_underscore(procs, tmp_path):
    from agentmesh import AgentBase, RpcAgentServerLauncher
    from agentmesh.errors import ServerUnavailableError
    from agentmesh.rpc import RpcClient
    from test_launcher import _start_cli

    folder = tmp_path / "agents"
    folder.mkdir()
    (folder / "greeter.py").write_text(GREETER)
    (folder / "main.py").write_text(DRIVER)
    driver = os.path.join(os.path.realpath(folder), "main.py")
    proc = procs([PYTHON, "-m", "agentmesh.cli", "server", "--port", "0", "--agent-dir", str(folder)],
                 stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"agentmesh server: agent-dir file {driver} failed to import: SystemExit(2)"), err
    assert "leading '_'" in last and 'if __name__ == "__main__":' in last
    launcher = RpcAgentServerLauncher(host="127.0.0.1", agent_dir=str(folder))
    try:
        with pytest.raises(ServerUnavailableError, match=f"agent-dir file {driver} failed to import"):
            launcher.launch()
    finally:
        launcher.shutdown()

    (folder / "main.py").rename(folder / "_main.py")      # the rule: a leading "_" keeps the driver out
    proc, port = _start_cli(procs, "--port", "0", "--agent-dir", str(folder))
    client = RpcClient("127.0.0.1", port)
    assert [name.split(":")[-1] for name in client.get_server_info()["classes"]] == ["Greeter"]
    assert client.create_agent({"class_name": "Greeter", "kwargs": {"name": "g"}}, agent_id="g1")
    assert RpcObject(AgentBase, "g1", "127.0.0.1", port, connect_existing=True)("you").result() == "hello you"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
