"""AgentScope 0.1.6 workloads: the same functions and shapes as workloads_agentmesh.py,
in AgentScope's distributed mode. Run by benchmarks/run.py in the AgentScope venv
(benchmarks/.envs/agentscope), which holds grpcio 1.60 and so cannot be agentmesh's:

    benchmarks/.envs/agentscope/bin/python benchmarks/workloads_agentscope.py <workload> '<sizes JSON>'
"""
from __future__ import annotations

import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import agentscope  # noqa: E402
from agentscope.agents import AgentBase  # noqa: E402
from agentscope.message import Msg  # noqa: E402
from agentscope.rpc import async_func  # noqa: E402
from agentscope.server import RpcAgentServerLauncher  # noqa: E402

import _common as C  # noqa: E402

HOST = "127.0.0.1"


class Noop(AgentBase):
    def __init__(self, name):
        super().__init__(name=name)

    def ping(self, x=None):
        return x

    @async_func
    def aping(self, x=None):
        return x

    def echo(self, data):
        return data


class WebAgent(AgentBase):
    """The tutorial's agent (AgentScope's own tutorial code, plus a ready() call)."""

    def __init__(self, name, sleep=5.0):
        super().__init__(name=name)
        self.sleep = sleep

    def get_answer(self, url, query):
        time.sleep(self.sleep)
        return f"Answer from {self.name}"

    def ready(self):
        return True

    def reply(self, x=None):
        # 0.1.6's Msg turns a dict content into its str(), so the query rides in metadata
        return Msg(name=self.name, role="assistant",
                   content=self.get_answer(x.metadata["url"], x.metadata["query"]))


def info() -> dict:
    import grpc

    return {"agentscope": agentscope.__version__, "grpcio": grpc.__version__, "python": sys.version.split()[0]}


def setup() -> None:
    agentscope.init(project="bench", disable_saving=True, save_log=False, save_code=False, save_api_invoke=False,
                    use_monitor=False, logger_level="WARNING")


def launch(n: int = 1) -> list[RpcAgentServerLauncher]:
    servers = []
    for _ in range(n):
        s = RpcAgentServerLauncher(host=HOST, port=None, custom_agent_classes=[Noop, WebAgent], local_mode=True)
        s.launch(in_subprocess=True)
        servers.append(s)
    return servers


def shutdown(servers) -> None:
    """Stop the servers at once (their graceful shutdown is not measured; it takes ~2 s each)."""
    for s in servers:
        proc = getattr(s, "server", None)
        if proc is not None and proc.pid:
            try:
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(5)
            except (OSError, AssertionError):
                pass


def tutorial(sz: dict) -> dict:
    n, sleep = sz["tutorial_agents"], sz["tutorial_sleep"]
    query = {"query": "example query"}

    def run(agents) -> float:
        start = time.perf_counter()
        results = [a.reply(Msg(name="system", role="system", content="", metadata=dict(query, url=f"page_{i}")))
                   for i, a in enumerate(agents)]
        answers = [r.content for r in results]
        assert answers == [f"Answer from W{i}" for i in range(n)], answers
        return time.perf_counter() - start

    setup()
    t = time.perf_counter()
    agents = [WebAgent(f"W{i}", sleep).to_dist() for i in range(n)]
    assert all(a.ready() for a in agents)
    child_init = time.perf_counter() - t
    child_run = run(agents)
    shutdown([a.server_launcher for a in agents if a.server_launcher is not None])
    servers = launch(1)
    try:
        t = time.perf_counter()
        agents = [WebAgent(f"W{i}", sleep).to_dist(host=HOST, port=servers[0].port) for i in range(n)]
        assert all(a.ready() for a in agents)
        indep_init = time.perf_counter() - t
        indep_run = run(agents)
    finally:
        shutdown(servers)
    return {"metrics": {"child_init": round(child_init, 3), "child_runtime": round(child_run, 3),
                        "indep_init": round(indep_init, 3), "indep_runtime": round(indep_run, 3)},
            "notes": [f"child mode starts one server process per agent ({n})"]}


def sync_call(sz: dict) -> dict:
    setup()
    servers = launch(1)
    try:
        agent = Noop("n").to_dist(host=HOST, port=servers[0].port)
        C.time_loop(agent.ping, sz["sync_warmup"])
        lat, wall = C.time_loop(lambda: agent.ping(), sz["sync_calls"])
        return {"metrics": C.sync_metrics(lat, wall)}
    finally:
        shutdown(servers)


def pipelined(sz: dict) -> dict:
    setup()
    servers = launch(1)
    try:
        agent = Noop("n").to_dist(host=HOST, port=servers[0].port)
        k = sz["pipe_inflight"]

        def one_round() -> int:
            results = [agent.aping() for _ in range(k)]
            for r in results:
                r.result()
            return k

        C.run_rounds(one_round, sz["pipe_warmup_rounds"])
        return {"metrics": {"rate": C.run_rounds(one_round, sz["pipe_rounds"])},
                "notes": ["each @async_func call runs its request in a new client thread; result() fetches the "
                          "value with a second RPC"]}
    finally:
        shutdown(servers)


def nn(sz: dict) -> dict:
    setup()
    servers = launch(sz["nn_servers"])
    try:
        agents = [Noop(f"n{i}").to_dist(host=HOST, port=servers[i % len(servers)].port)
                  for i in range(sz["nn_agents"])]
        for a in agents:
            C.time_loop(a.ping, 20)
        calls = [a.ping for a in agents]   # bind once: every attribute access on a proxy checks creation
        out = C.nn_threads(lambda t, i: calls[i](), sz["nn_callers"], len(agents), sz["nn_calls"])
        return {"metrics": out}
    finally:
        shutdown(servers)


def creation(sz: dict) -> dict:
    setup()
    servers = launch(2)
    try:
        ports = [s.port for s in servers]
        for i in range(5):
            Noop(f"w{i}").to_dist(host=HOST, port=ports[i % 2]).ping()
        n = sz["create_agents"]
        t = time.perf_counter()
        for start in range(0, n, 100):   # create a batch of 100, then one call to each (as every system)
            batch = [Noop(f"c{i}").to_dist(host=HOST, port=ports[i % 2]) for i in range(start, min(n, start + 100))]
            for answer in [agent.aping() for agent in batch]:   # one asynchronous call each, then wait
                answer.result()
        return {"metrics": {"rate": round(n / (time.perf_counter() - t), 1)}}
    finally:
        shutdown(servers)


def payload(sz: dict) -> dict:
    setup()
    servers = launch(1)
    try:
        agent = Noop("n").to_dist(host=HOST, port=servers[0].port)
        return C.echo_sizes(agent.echo, sz)
    finally:
        shutdown(servers)


def memory(sz: dict) -> dict:
    setup()
    n = sz["memory_agents"]
    servers = launch(1)
    try:
        port, pid = servers[0].port, servers[0].server.pid
        Noop("warm").to_dist(host=HOST, port=port).ping()
        time.sleep(0.5)
        before = C.rss_kb(pid)
        proxies = []
        for start in range(0, n, 100):   # batches: to_dist() creates in a background thread; ping() waits for it
            batch = [Noop(f"m{i}").to_dist(host=HOST, port=port) for i in range(start, min(n, start + 100))]
            for p in batch:
                p.ping()
            proxies += batch
        time.sleep(0.5)
        after = C.rss_kb(pid)
        return {"metrics": {"per_agent_kb": round((after - before) / n, 2), "server_rss_mb": round(after / 1024, 1),
                            "agents": n},
                "notes": [f"server RSS {before / 1024:.1f} MB with 1 agent, {after / 1024:.1f} MB with {n + 1}"]}
    finally:
        shutdown(servers)


WORKLOADS = {f.__name__: f for f in (tutorial, sync_call, pipelined, nn, creation, payload, memory)}

if __name__ == "__main__":
    C.main(WORKLOADS, info)
