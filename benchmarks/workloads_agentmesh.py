"""agentmesh workloads. Same functions, same shapes as workloads_agentscope.py and
workloads_ray.py; run by benchmarks/run.py in agentmesh's own interpreter:

    python benchmarks/workloads_agentmesh.py <workload> '<sizes JSON>'

The last seven workloads (registry, failover, checkpoint, scale, simulation, and metrics and tracing
from workloads_observe.py) are agentmesh's alone.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import agentmesh  # noqa: E402
from agentmesh import Msg  # noqa: E402
from agentmesh.testing import default_runtime  # noqa: E402

import _common as C  # noqa: E402
import workloads_async as aio_workloads  # noqa: E402
import workloads_durable as durable_workloads  # noqa: E402
import workloads_observe as observe  # noqa: E402
from _servers import HOST, TOKEN, launch, shutdown  # noqa: E402
from bench_agents import Noop, WebAgent  # noqa: E402


def info() -> dict:
    import grpc

    return {"agentmesh": agentmesh.__version__, "grpcio": grpc.__version__, "python": sys.version.split()[0]}


# -- the tutorial -------------------------------------------------------------
def tutorial(sz: dict) -> dict:
    """AgentScope's distribution tutorial: 5 agents whose reply() sleeps, child then independent mode.

    init: construct + to_dist() the 5 agents, then one ready() call each (the agents exist and answer);
    runtime: 5 reply() calls, then read every answer (the tutorial's run()).
    """
    n, sleep = sz["tutorial_agents"], sz["tutorial_sleep"]
    query = {"query": "example query"}

    def run(agents) -> float:
        start = time.perf_counter()
        results = [a.reply(Msg(name="system", role="system", content=dict(query, url=f"page_{i}")))
                   for i, a in enumerate(agents)]
        answers = [r.content for r in results]
        assert answers == [f"Answer from W{i}" for i in range(n)], answers
        return time.perf_counter() - start

    agentmesh.init()   # no registry: to_dist() with no host starts child servers
    t = time.perf_counter()
    agents = [WebAgent(f"W{i}", sleep).to_dist() for i in range(n)]
    assert all(a.ready() for a in agents)
    child_init = time.perf_counter() - t
    child_run = run(agents)
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
            "notes": [f"child mode started {default_runtime().settings.child_servers} child server(s) shared "
                      f"by the {n} agents"]}


# -- calls ----------------------------------------------------------------------
def sync_call(sz: dict) -> dict:
    """The sync round trip, then (agentmesh only) the floor under it in the same run: bench_transport's bare
    gRPC ping-pong designs that answer inline (aio and thread-per-stream servers, aio and sync clients, with
    agentmesh's gRPC options); the floor is the best of them."""
    servers = launch(1)
    try:
        agent = Noop("n").to_dist(host=HOST, port=servers[0].port)
        C.time_loop(agent.ping, sz["sync_warmup"])
        lat, wall = C.time_loop(agent.ping, sz["sync_calls"])
        metrics = C.sync_metrics(lat, wall)
    finally:
        shutdown(servers)
    import bench_transport

    bench_transport.OPTIONS["on"] = True
    designs = {f"{server}/{client}": bench_transport.measure(server, client, sz["sync_calls"])
               for server in ("aio", "sync") for client in ("aio", "sync")}
    floor = min(designs.values())
    metrics.update(floor=round(floor, 1), over_floor=round(metrics["rtt"]["median"] / floor, 2))
    return {"metrics": metrics, "notes": ["bare gRPC designs (server/client, median µs): " + ", ".join(
        f"{name} {value:.0f}" for name, value in designs.items())]}


def pipelined(sz: dict) -> dict:
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
        return {"metrics": {"rate": C.run_rounds(one_round, sz["pipe_rounds"])}}
    finally:
        shutdown(servers)


def nn(sz: dict) -> dict:
    servers = launch(sz["nn_servers"])
    try:
        agents = [Noop(f"n{i}").to_dist(host=HOST, port=servers[i % len(servers)].port)
                  for i in range(sz["nn_agents"])]
        for a in agents:
            C.time_loop(a.ping, 20)
        out = C.nn_threads(lambda t, i: agents[i].ping(), sz["nn_callers"], len(agents), sz["nn_calls"])
        return {"metrics": out}
    finally:
        shutdown(servers)


def creation(sz: dict) -> dict:
    """Agents created on 2 running servers (alternating), in batches of 100: create the batch, then one
    call to each (so every agent exists before the clock stops); the same shape for every system."""
    servers = launch(2, capacity=sz["create_agents"] + 10)
    try:
        ports = [s.port for s in servers]
        for i in range(5):   # warm-up: connections open, classes shipped
            Noop(f"w{i}").to_dist(host=HOST, port=ports[i % 2]).ping()
        n = sz["create_agents"]
        t = time.perf_counter()
        for start in range(0, n, 100):
            batch = [Noop(f"c{i}").to_dist(host=HOST, port=ports[i % 2]) for i in range(start, min(n, start + 100))]
            for answer in [agent.aping() for agent in batch]:   # one asynchronous call each, then wait
                answer.result()
        return {"metrics": {"rate": round(n / (time.perf_counter() - t), 1)}}
    finally:
        shutdown(servers)


def payload(sz: dict) -> dict:
    servers = launch(1)
    try:
        agent = Noop("n").to_dist(host=HOST, port=servers[0].port)
        return C.echo_sizes(agent.echo, sz)
    finally:
        shutdown(servers)


def memory(sz: dict) -> dict:
    n = sz["memory_agents"]
    servers = launch(1, capacity=n + 10)
    try:
        port, pid = servers[0].port, servers[0].pid
        Noop("warm").to_dist(host=HOST, port=port).ping()
        time.sleep(0.5)
        before = C.rss_kb(pid)
        proxies = []
        for start in range(0, n, 100):   # the same batches as the peers: create 100, then one call each
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


# -- agentmesh alone ------------------------------------------------------------
async def present(url: str, key: str) -> bool:
    """Whether key exists in the etcd at url (a fresh client: the benchmark restarts etcd)."""
    from agentmesh.etcd import EtcdClient

    client = EtcdClient.from_url(url)
    try:
        return await client.get(key) is not None
    finally:
        await client.close()


def registry(sz: dict) -> dict:
    """etcd + 4 registered servers: registry-resolved to_dist(), SIGKILL -> key gone, etcd restart."""
    from agentmesh.discovery import keys
    from agentmesh.testing import EtcdProcess

    n_warm, n_bulk = sz["registry_warm"], sz["registry_bulk"]
    metrics = {}
    with EtcdProcess(name="agentmesh-bench") as etcd:
        servers = launch(4, capacity=n_bulk + n_warm + 10, registry=etcd.url, namespace="bench", token=TOKEN)
        try:
            agentmesh.init(registry=etcd.url, namespace="bench", token=TOKEN)
            Noop("warm-up").to_dist().ping()
            lat = []
            for i in range(n_warm):
                t = time.perf_counter()
                Noop(f"w{i}").to_dist()
                lat.append(time.perf_counter() - t)
            metrics["to_dist"] = C.dist(lat, 1e3, 3)
            t = time.perf_counter()
            for i in range(n_bulk):
                Noop(f"b{i}").to_dist()
            metrics["bulk_rate"] = round(n_bulk / (time.perf_counter() - t), 1)

            victim = servers[0]
            key = keys.server_key("bench", victim.server_id)
            os.kill(victim.pid, signal.SIGKILL)
            t = time.perf_counter()
            while asyncio.run(present(etcd.url, key)) and time.perf_counter() - t < 15:
                time.sleep(0.02)
            metrics["key_gone"] = round(time.perf_counter() - t, 2)

            etcd.stop()
            etcd.start(data_dir=etcd.data_dir + "-wiped", client_port=etcd.client_port)
            t = time.perf_counter()
            want = [keys.server_key("bench", s.server_id) for s in servers[1:]]
            while not all(asyncio.run(present(etcd.url, k)) for k in want) and time.perf_counter() - t < 30:
                time.sleep(0.02)
            metrics["reregister"] = round(time.perf_counter() - t, 2)
        finally:
            default_runtime().configure(registry=None)
            shutdown(servers)
    return {"metrics": metrics,
            "notes": [f"to_dist(): {n_warm} agents one after another over 4 registered servers, registry view "
                      f"already watching; bulk: {n_bulk} more", "key gone: lease TTL 3 s (default), polled every "
                      "20 ms", "re-register: etcd stopped and restarted empty on the same port, 3 live servers"]}


def failover(sz: dict) -> dict:
    """SIGKILL the server of a registry-placed agent; time until the next call returns (on a new server)."""
    from agentmesh.discovery import keys
    from agentmesh.testing import EtcdProcess

    rounds = sz["failover_rounds"]
    times, calls_ok = [], 0
    with EtcdProcess(name="agentmesh-bench-failover") as etcd:
        servers = launch(rounds + 1, capacity=16, registry=etcd.url, namespace="failover", token=TOKEN)
        by_port = {s.port: s for s in servers}
        try:
            agentmesh.init(registry=etcd.url, namespace="failover", token=TOKEN)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(
                    asyncio.run(present(etcd.url, keys.server_key("failover", s.server_id))) for s in servers):
                time.sleep(0.05)
            agent = Noop("victim").to_dist()
            for i in range(rounds):
                for j in range(3):
                    assert agent.ping(j) == j
                victim = by_port[int(agent.server.rsplit(":", 1)[1])]
                os.kill(victim.pid, signal.SIGKILL)
                t = time.perf_counter()
                assert agent.ping("after") == "after"
                times.append(time.perf_counter() - t)
                calls_ok += 1
                assert int(agent.server.rsplit(":", 1)[1]) != victim.port
                # let the dead server's lease expire, so the next round starts from a clean registry
                key = keys.server_key("failover", victim.server_id)
                t = time.monotonic()
                while asyncio.run(present(etcd.url, key)) and time.monotonic() - t < 15:
                    time.sleep(0.05)
        finally:
            default_runtime().configure(registry=None)
            shutdown(servers)
    return {"metrics": {"sigkill": C.dist(times, 1.0, 3)},
            "notes": [f"{rounds} rounds: SIGKILL the agent's server, then time one ping(); it returns from the "
                      f"agent re-created on another registered server ({calls_ok} of {rounds} calls returned)"]}


def checkpoint(sz: dict) -> dict:
    """No-op round trip with checkpoints on (the default) vs to_dist(..., checkpoint=False), interleaved."""
    servers = launch(1)
    try:
        port = servers[0].port
        on = Noop("on").to_dist(host=HOST, port=port)
        off = Noop("off").to_dist(host=HOST, port=port, checkpoint=False)
        C.time_loop(on.ping, sz["sync_warmup"])
        C.time_loop(off.ping, sz["sync_warmup"])
        lat_on, lat_off = [], []
        block = 100
        for _ in range(max(1, sz["ckpt_calls"] // block)):
            lat_on += C.time_loop(on.ping, block)[0]
            lat_off += C.time_loop(off.ping, block)[0]
        m_on, m_off = C.dist(lat_on, 1e6), C.dist(lat_off, 1e6)
        return {"metrics": {"on": m_on, "off": m_off, "cost": round(m_on["median"] - m_off["median"], 1)},
                "notes": [f"{len(lat_on)} calls each, in interleaved blocks of {block}"]}
    finally:
        shutdown(servers)


def scale(sz: dict) -> dict:
    """Issue 12's scale figures (bench_scale.measure): 10,000 agents over 4 servers with a SIGKILL; 10,000
    agents of a SIGKILLed server onto its one survivor; 100,000 idle agents on one server."""
    from bench_scale import measure

    n, idle = sz["scale_agents"], sz["scale_idle_agents"]
    four = measure(n, 4)
    pair = measure(2 * n, 2, calls=False)
    one = measure(idle, 1, calls=False, kill=False)
    return {"metrics": {"place_rate": four["to_dist_rate"], "call_rate": four["call_rate"],
                        "quarter_all": four["kill_all"], "mass_first": pair["kill_first"],
                        "mass_all": pair["kill_all"], "mass_wrong": pair["kill_wrong"] + four["kill_wrong"],
                        "mass_warnings": pair["kill_warnings"], "shutdown": one["shutdown_s"],
                        "idle_kb": one["server_kb"], "proxy_kb": four["proxy_kb"]},
            "notes": [f"{n:,} agents over 4 servers: the SIGKILLed server hosted {four['kill_hosted']:,}; "
                      f"{2 * n:,} over 2: {pair['kill_hosted']:,} moved to the survivor, their calls made in "
                      f"{pair['kill_made']:.2f} s; {idle:,} idle agents on one server"]
            + [f"shutdown raised {m['shutdown_error']}" for m in (four, pair, one) if m["shutdown_error"]]}


def simulation(sz: dict) -> dict:
    """examples/simulation's game at three sizes (bench_simulation.one_size)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples", "simulation"))
    from bench_simulation import one_round_at, one_size

    metrics, notes = {}, []
    for i, n in enumerate(sz["sim_sizes"]):
        m = one_size(n)
        metrics.update({f"setup{i}": m["setup_s"], f"round{i}": m["round_s"], f"kb{i}": m["server_kb"],
                        f"kill{i}": m["kill_round_s"]})
        notes.append(f"N = {n:,}: {m['moved']:,} participants moved in the SIGKILL round, {m['answers']:,} "
                     f"answers")
    big = one_round_at(sz["million"])
    metrics.update(m_setup=big["setup_s"], m_round=big["round_s"], m_idle_kb=big["server_idle_kb"],
                   m_client_kb=big["client_kb"], m_etcd_mb=big["etcd_db_mb"])
    notes.append(f"{sz['million']:,} participants: server memory per participant after the round "
                 f"{big['server_after_round_kb']} KB, client per proxy {big['client_after_round_kb']} KB")
    return {"metrics": metrics, "notes": notes}


WORKLOADS = {f.__name__: f for f in (tutorial, sync_call, pipelined, nn, creation, payload, memory,
                                     registry, failover, checkpoint, scale, simulation, observe.metrics,
                                     observe.tracing, aio_workloads.aio, aio_workloads.stream,
                                     aio_workloads.async_threads, durable_workloads.durable)}

if __name__ == "__main__":
    C.main(WORKLOADS, info)
