"""Durable agents' costs (issue 26), in a SQLite file and in a PostgreSQL of their own, beside the same calls
without a store: a state-changing call's round trip, pipelined state-changing calls over 1,000 agents, and
10,000 detached agents of a SIGKILLed server answering again from the store, their creator gone.

Run by benchmarks/run.py through workloads_agentmesh.py (same interpreter, same JSON shape). The SQLite store
is in its default mode (WAL, synchronous=NORMAL: a commit survives any process's death); the PostgreSQL is a
throw-away cluster with fsync and synchronous commits on (PostgresProcess(fast=False)).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import agentmesh
from agentmesh.testing import EtcdProcess
from agentmesh.testing.postgres import PostgresProcess

import _common as C
from bench_agents import Counter
from _servers import HOST, launch, shutdown

TOKEN = "bench-durable-Qm3Xv8Tz1Rk6Wp9Ns4Hc7Jd2Lf5Gb0Ey"
NAMESPACE = "bench-durable"
HERE = os.path.dirname(os.path.abspath(__file__))


def _done(servers: list) -> None:
    """This process lets go of its agents first (closing its sessions), then the servers are killed: so no proxy
    of a part moves its agents to child servers while the next part is measured."""
    agentmesh.shutdown()
    shutdown(servers)


def _records(url: str, at_least: int, timeout: float = 60.0) -> None:
    """Wait until the registry holds at_least agent records of the namespace (servers write them in batches)."""
    import asyncio

    from agentmesh.discovery import keys
    from agentmesh.etcd import EtcdClient

    async def count() -> int:
        client = EtcdClient.from_url(url)
        try:
            return len((await client.get_prefix(keys.agents_prefix(NAMESPACE)))[0])
        finally:
            await client.close()

    deadline = time.monotonic() + timeout
    while asyncio.run(count()) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {at_least} agent records after {timeout} s")
        time.sleep(0.1)


def _round_trip(url: str, sz: dict) -> dict:
    """Median round trip of inc() (a state change) on a durable agent and on a plain one, in interleaved
    blocks, on one server with the store."""
    agentmesh.init(state_store=url)
    servers = launch(1, classes=(Counter,), state_store=url)
    try:
        pin = {"host": HOST, "port": servers[0].port}
        plain = Counter("plain").to_dist(**pin)
        durable = Counter("durable").to_dist(**pin, lifetime="detached")
        C.time_loop(plain.inc, sz["sync_warmup"])
        C.time_loop(durable.inc, sz["sync_warmup"])
        lat_plain, lat_durable = [], []
        for _ in range(max(1, sz["durable_calls"] // 100)):
            lat_plain += C.time_loop(plain.inc, 100)[0]
            lat_durable += C.time_loop(durable.inc, 100)[0]
        p, d = C.dist(lat_plain, 1e6), C.dist(lat_durable, 1e6)
        assert durable.peek() == sz["sync_warmup"] + len(lat_durable)
        return {"plain": p["median"], "durable": d["median"], "ratio": round(d["median"] / p["median"], 2)}
    finally:
        _done(servers)


def _pipelined(url: str, sz: dict) -> dict:
    """inc() sent to each of n durable agents k times without waiting, then every answer read: calls/s (and the
    same without a store, for comparison)."""
    n, k = sz["durable_agents"], sz["durable_pipe_calls"]
    agentmesh.init(state_store=url)
    servers = launch(1, classes=(Counter,), state_store=url, capacity=2 * n + 10)
    try:
        pin = {"host": HOST, "port": servers[0].port}
        rates = {}
        for kind, extra in (("plain", {}), ("durable", {"lifetime": "detached"})):
            agents = [Counter(f"{kind}{i}").to_dist(**pin, **extra) for i in range(n)]
            for a in agents:
                a.peek()
            start = time.perf_counter()
            pending = [a.inc.aio() for _ in range(k) for a in agents]
            values = [p.result() for p in pending]
            rates[kind] = round(len(values) / (time.perf_counter() - start))
            assert max(values) == k
        return rates
    finally:
        _done(servers)


def _store_bytes(url: str) -> int:
    """The store's size on disk (StateStore.size)."""
    from agentmesh.store import open_store

    store = open_store(url)
    try:
        return store.size()
    finally:
        store.close()


def _bounded(url: str, sz: dict) -> dict:
    """n durable agents with states of about 10 KB, k calls each (pipelined): the store's size and the server's
    RSS after k/4 calls each and after all k: both stay flat as calls go on (a row per agent, rewritten)."""
    n, k, size = sz["durable_agents"], sz["durable_pipe_calls"], 10_000
    agentmesh.init(state_store=url)
    servers = launch(1, classes=(Counter,), state_store=url, capacity=n + 10)
    try:
        agents = [Counter(f"b{i}", size).to_dist(host=HOST, port=servers[0].port, lifetime="detached")
                  for i in range(n)]
        marks = []
        for calls in (max(1, k // 4), k - max(1, k // 4)):
            for p in [a.inc.aio() for _ in range(calls) for a in agents]:
                p.result()
            marks.append((_store_bytes(url), C.rss_kb(servers[0].pid)))
        return {"store_mb_quarter": round(marks[0][0] / 2**20, 1), "store_mb": round(marks[1][0] / 2**20, 1),
                "rss_mb_quarter": round(marks[0][1] / 1024, 1), "rss_mb": round(marks[1][1] / 1024, 1)}
    finally:
        _done(servers)


CREATOR = textwrap.dedent("""
    import sys
    import agentmesh
    from bench_agents import Counter
    agentmesh.init(token=sys.argv[3], state_store=sys.argv[4])
    agents = [Counter(f"d{i}").to_dist(host="127.0.0.1", port=int(sys.argv[1]), name=f"d{i}", lifetime="detached")
              for i in range(int(sys.argv[2]))]
    assert all(a.inc() == 1 for a in agents)
""")


def _detached_back(url: str, sz: dict, env: dict) -> dict:
    """n detached agents made on one server by a process that then exits; this process finds them by name;
    that server is SIGKILLed; time until every one of them answered again (activated from the store)."""
    n = sz["durable_detached"]
    with EtcdProcess(name="agentmesh-bench-durable") as etcd:
        started: list = []
        try:
            launch(2, classes=(Counter,), into=started, capacity=n + 10, registry=etcd.url, namespace=NAMESPACE,
                   token=TOKEN, state_store=url)
            creator_env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""),
                               AGENTMESH_NAMESPACE=NAMESPACE, **env)
            subprocess.run([sys.executable, "-c", CREATOR, str(started[0].port), str(n), TOKEN, url], check=True,
                           env=creator_env, timeout=600)
            _records(etcd.url, n)      # every agent's record written: get_agent finds it where it lives
            agentmesh.init(registry=etcd.url, namespace=NAMESPACE, token=TOKEN, state_store=url)
            begin = time.perf_counter()
            agents = [agentmesh.get_agent(f"d{i}") for i in range(n)]
            found = time.perf_counter() - begin
            assert all(a.server.endswith(f":{started[0].port}") for a in agents)
            assert [p.result() for p in [a.inc.aio() for a in agents]] == [2] * n
            os.kill(started[0].pid, signal.SIGKILL)
            killed = time.perf_counter()
            pending = [a.inc.aio() for a in agents]
            values = [p.result(timeout=120) for p in pending]
            took = time.perf_counter() - killed
            wrong = sum(v != 3 for v in values)
            return {"back_s": round(took, 2), "wrong": wrong, "get_agent_ms": round(found / n * 1e3, 3)}
        finally:
            agentmesh.shutdown()
            agentmesh.init(registry=None, state_store="")
            shutdown(started)


def durable(sz: dict) -> dict:
    """Every figure above for both stores."""
    metrics, notes = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-durable-") as folder:
        pg = PostgresProcess(name="agentmesh-bench-postgres", fast=False).start()
        try:
            stores = [("sqlite", lambda tag: f"sqlite://{folder}/{tag}.db", {}),
                      ("pg", pg.create_database, {"AGENTMESH_STATE_STORE_PASSWORD_FILE": pg.password_file})]
            for kind, make, env in stores:
                os.environ.update(env)
                rt = _round_trip(make(f"rt_{kind}"), sz)
                pipe = _pipelined(make(f"pipe_{kind}"), sz)
                bounded = _bounded(make(f"big_{kind}"), sz)
                back = _detached_back(make(f"back_{kind}"), sz, env)
                metrics.update({f"{kind}_rtt_plain": rt["plain"], f"{kind}_rtt": rt["durable"],
                                f"{kind}_ratio": rt["ratio"], f"{kind}_pipe_plain": pipe["plain"],
                                f"{kind}_pipe": pipe["durable"], f"{kind}_back": back["back_s"],
                                f"{kind}_back_wrong": back["wrong"], f"{kind}_store_mb": bounded["store_mb"],
                                f"{kind}_rss_mb": bounded["rss_mb"]})
                notes.append(f"{kind}: {sz['durable_agents']:,} agents of ~10 KB: store {bounded['store_mb_quarter']} "
                             f"MB after {max(1, sz['durable_pipe_calls'] // 4)} calls each, {bounded['store_mb']} MB "
                             f"after {sz['durable_pipe_calls']}; server RSS {bounded['rss_mb_quarter']} -> "
                             f"{bounded['rss_mb']} MB")
                notes.append(f"{kind}: get_agent() {back['get_agent_ms']} ms per agent (a lookup by name and one "
                             f"in the registry)")
                for name in env:
                    os.environ.pop(name, None)
        finally:
            pg.stop()
    notes.append(f"round trips: {sz['durable_calls']:,} inc() calls each, in interleaved blocks of 100; pipelined: "
                 f"{sz['durable_agents']:,} agents x {sz['durable_pipe_calls']} calls; "
                 f"{sz['durable_detached']:,} detached agents on the SIGKILLed server")
    return {"metrics": metrics, "notes": notes}
