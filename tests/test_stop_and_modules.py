"""Servers that talk to each other stop at once; a class's local modules ship with it (py_modules=).

Stopping: a server that drains waits for its sessions to end, so that proxies
can move their agents and running calls finish. A server whose agents hold
proxies of agents on another server keeps a session to it; a proxy there that
has nothing to move (no registry, or a copy that follows the agent's record)
now lets go of that session at once, and a session closes once the last value
the draining server owed it (a call's reply, a placeholder's fetch) is in.
Before, each of two such servers waited its whole grace (5 s) for the other.

Modules: a class the server cannot import goes by value with its module, but
a local module its code imports (``helpers``) did not, so the server failed
with ``No module named 'helpers'``. ``py_modules=[helpers]`` puts that
module's code in the class's pickle.
"""
from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import agentmesh
from agentmesh import AgentBase, Msg, errors
from agentmesh._class_cache import ClassCache
from agentmesh.discovery import keys
from agentmesh.msghub import msghub
from conftest import PYTHON, etcd_get_prefix, server_info, wait_until

#: how long a drained, idle server may take to exit (it took 5 s when a peer held a session to it)
STOP_WITHIN = 2.0


class Talker(AgentBase):
    """Answers after `seconds`; holds a proxy of another agent (its peer) and calls it."""

    def __init__(self, name: str, seconds: float = 0.0) -> None:
        super().__init__(name)
        self.seconds = seconds
        self.spoken = 0
        self.peer = None

    def reply(self, x=None):
        if x is not None:
            self.memory.add(x)
        time.sleep(self.seconds)
        self.spoken += 1
        return Msg(self.name, f"{self.name} says {self.spoken}")

    def meet(self, peer) -> None:
        self.peer = peer

    def ask_peer(self) -> str:
        return self.peer.whoami()

    def whoami(self) -> str:
        return self.name

    def heard(self) -> int:
        return self.memory.size()


def at(launcher) -> dict:
    return {"host": "127.0.0.1", "port": launcher.port}


def sigterm(*launchers) -> list[float]:
    """SIGTERM the servers together; the seconds each took to exit (each must exit 0)."""
    procs = [launcher._process.proc for launcher in launchers]
    start = time.monotonic()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    took = []
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"agent server process {proc.pid} did not stop within 30 s of SIGTERM")
        took.append(time.monotonic() - start)
        assert proc.returncode == 0, f"agent server process {proc.pid} exited {proc.returncode}"
    print(f"stopped in {', '.join(f'{t:.2f} s' for t in took)}")
    return took


def pair(a, b) -> None:
    """Each agent holds a proxy of the other and has called it, and they spoke in a msghub: each server
    holds a session to the other."""
    a.meet(b)
    b.meet(a)
    assert (a.ask_peer(), b.ask_peer()) == ("b", "a")
    with msghub([a, b]):
        b(a()).result()
        wait_until(lambda: a.heard() >= 1 and b.heard() >= 1)   # a heard b's broadcast, b a's reply


def test_two_servers_whose_agents_call_each_other_both_stop_at_once(servers):
    s1, s2 = servers(capacity=4), servers(capacity=4)
    pair(Talker("a").to_dist(**at(s1)), Talker("b").to_dist(**at(s2)))
    took = sigterm(s1, s2)
    assert max(took) < STOP_WITHIN, f"two idle servers took {took} s to stop (a lone one takes ~0.3 s)"


def test_a_server_stops_at_once_while_a_peer_holds_a_session_and_its_running_call_finishes(servers):
    s1, s2 = servers(capacity=4), servers(capacity=4)
    a, b = Talker("a", seconds=1.0).to_dist(**at(s1)), Talker("b").to_dist(**at(s2))
    b.meet(a)
    assert b.ask_peer() == "a"              # b's server holds a session to a's
    x = a()                                 # runs 1 s on s1
    y = b(x)                                # b's server fetches x from s1 while s1 drains
    wait_until(lambda: server_info(s1).inflight >= 1)
    started = time.monotonic()
    s1._process.proc.send_signal(signal.SIGTERM)
    wait_until(y.done, timeout=15)          # it hung before: the fetch's session was closed under it
    assert x.content == "a says 1" and y.content == "b says 1"
    s1._process.proc.wait(timeout=30)
    took = time.monotonic() - started
    print(f"stopped in {took:.2f} s, its last call included")
    assert s1._process.proc.returncode == 0 and took < 1.0 + STOP_WITHIN
    assert b.whoami() == "b" and b().content == "b says 2"   # the peer serves on


def test_with_a_registry_and_nowhere_registered_to_go_both_stop_at_once(mesh, namespace, servers, runtime):
    """The owner moves the agents to its child servers (nothing else is registered); the servers' proxies of
    them find no record to follow, and no longer hold the servers up while they look."""
    s1, s2 = (servers(capacity=8, registry=mesh.url, namespace=namespace) for _ in range(2))
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 2)
    a, b = Talker("a").to_dist(**at(s1)), Talker("b").to_dist(**at(s2))
    pair(a, b)
    runtime.children.choose()                 # the child servers start now, not within the stop measured
    for child in runtime.children.processes:
        child.wait_ready()
    took = sigterm(s1, s2)
    assert max(took) < STOP_WITHIN, f"two idle servers took {took} s to stop"
    assert (a.whoami(), b.whoami()) == ("a", "b")             # moved, and answer
    assert {a.server, b.server}.isdisjoint({s1.address, s2.address})


# -- py_modules ----------------------------------------------------------------------------------
HELPERS = '''
"""Helpers the agent's module uses: the server has no copy."""
PREFIX = ">>"


def shout(text):
    return f"{PREFIX} {text.upper()}"


class Counter:
    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n
'''

AGENT_MODULE = '''
import helpers
from helpers import shout

from agentmesh import AgentBase, Msg


class Loud(AgentBase):
    def __init__(self, name):
        super().__init__(name)
        self.counter = helpers.Counter()

    def reply(self, x=None):
        return Msg(self.name, f"{shout(x.content)} #{self.counter.bump()}")
'''


@pytest.fixture
def local_modules(tmp_path, monkeypatch):
    """helpers.py and helped_agents.py (which imports it), importable here only: call it after starting the
    servers, which take this process's sys.path when they start."""
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "helpers.py").write_text(HELPERS)
    (folder / "helped_agents.py").write_text(AGENT_MODULE)

    def add():
        monkeypatch.syspath_prepend(str(folder))
        return importlib.import_module("helpers"), importlib.import_module("helped_agents")

    yield add
    for name in ("helpers", "helped_agents"):
        sys.modules.pop(name, None)


def test_py_modules_ship_a_local_module_the_agent_class_uses(server, local_modules):
    helpers, helped = local_modules()
    without = helped.Loud("plain").to_dist(**at(server))
    with pytest.raises(errors.ClassNotFoundError) as refused:
        without(Msg("user", "hi")).content
    message = str(refused.value)
    assert "No module named 'helpers'" in message and "py_modules=[helpers]" in message, message
    loud = helped.Loud("loud").to_dist(**at(server), py_modules=[helpers])
    assert loud(Msg("user", "hi")).content == ">> HI #1"      # a function, a constant and a class of helpers
    assert loud(Msg("user", "ho")).content == ">> HO #2"      # its state (a helpers.Counter) lives on


def test_init_py_modules_ship_with_every_class_of_a_main_script(procs, tmp_path):
    """A class defined in __main__ (by value anyway) that uses a local module, with init(py_modules=)."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helpers.py").write_text(HELPERS)
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(f'''
        import sys
        import agentmesh
        from agentmesh import AgentBase, Msg, RpcAgentServerLauncher, errors

        server = RpcAgentServerLauncher(host="127.0.0.1", capacity=8)
        server.launch()                          # before helpers is importable here: the server lacks it
        sys.path.insert(0, {str(tmp_path / "lib")!r})
        import helpers


        class Quiet(AgentBase):
            def reply(self, x=None):
                return Msg(self.name, helpers.shout(x.content).lower())


        try:
            Quiet("before").to_dist(host="127.0.0.1", port=server.port)(Msg("user", "Hi")).content
        except errors.ClassNotFoundError as exc:
            print("refused:", exc)
        agentmesh.init(py_modules=["helpers"])
        print("answer:", Quiet("after").to_dist(host="127.0.0.1", port=server.port)(Msg("user", "Hi")).content)
        server.shutdown()
    '''))
    proc = procs([PYTHON, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    refused = [line for line in out.splitlines() if line.startswith("refused:")]
    assert refused and "No module named 'helpers'" in refused[0] and "py_modules=" in refused[0], out
    assert "answer: >> hi" in out.splitlines(), out


def test_a_class_goes_once_per_server_and_again_with_new_modules(local_modules):
    helpers, helped = local_modules()
    cache = ClassCache()
    plain = cache.ref(helped.Loud, "s1")
    assert plain.blob and not cache.by_value(helped.Loud)
    cache.mark_shipped("s1", plain.digest)
    assert not cache.ref(helped.Loud, "s1").blob                  # the server has it: the digest alone
    cache.ship_with(helped.Loud, ["helpers"])
    shipped = cache.ref(helped.Loud, "s1")
    assert cache.by_value(helped.Loud) and shipped.digest != plain.digest and shipped.blob
    assert b"PREFIX" in shipped.blob                               # helpers' code is in the pickle
    cache.mark_shipped("s1", shipped.digest)
    cache.ship_with(helped.Loud, ["helpers"])                      # nothing new: the same pickle
    assert cache.ref(helped.Loud, "s1") == type(shipped)(name=shipped.name, digest=shipped.digest)
    assert cache.ref(helped.Loud, "s2").blob == shipped.blob       # another server gets it once too


def test_py_modules_are_checked_before_anything_is_placed(runtime, local_modules):
    helpers, helped = local_modules()
    with pytest.raises(TypeError, match="list of modules"):
        helped.Loud("x").to_dist(py_modules=helpers)
    with pytest.raises(ValueError, match="no_such_module_here"):
        helped.Loud("x").to_dist(py_modules=["no_such_module_here"])
    with pytest.raises(TypeError, match="neither a module"):
        agentmesh.init(py_modules=[42])
    runtime.configure(py_modules=[helpers, "helpers"])
    assert runtime.settings.py_modules == ("helpers",)
