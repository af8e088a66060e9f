"""Ray actor workloads: the same functions and shapes as workloads_agentmesh.py, with
Ray actors as the agents (``ray.get(a.f.remote())`` is the synchronous call).
Run by benchmarks/run.py in the Ray venv (benchmarks/.envs/ray):

    benchmarks/.envs/ray/bin/python benchmarks/workloads_ray.py <workload> '<sizes JSON>'

Ray has no agent servers: every actor is a worker process of its own, so "on 2
servers" does not apply, and creation and memory use fewer actors than the
others use agents (sizes ray_create_actors / ray_memory_actors); the table says so.
"""
from __future__ import annotations

import os
import sys
import time

# Keep every Ray process on 127.0.0.1, and never phone home.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ray  # noqa: E402

import _common as C  # noqa: E402


@ray.remote(num_cpus=0)
class Noop:
    def ping(self, x=None):
        return x

    def aping(self, x=None):
        return x

    def echo(self, data):
        return data

    def pid(self):
        return os.getpid()


@ray.remote(num_cpus=0)
class WebAgent:
    def __init__(self, name, sleep=5.0):
        self.name = name
        self.sleep = sleep

    def get_answer(self, url, query):
        time.sleep(self.sleep)
        return f"Answer from {self.name}"

    def ready(self):
        return True

    def reply(self, x=None):
        return {"name": self.name, "content": self.get_answer(x["content"]["url"], x["content"]["query"])}


def info() -> dict:
    out = {"ray": ray.__version__, "python": sys.version.split()[0]}
    try:
        import grpc

        out["grpcio"] = grpc.__version__
    except ImportError:
        out["grpcio"] = "bundled"
    return out


def start() -> None:
    # Ray's session files go to the run's own directory (the harness deletes it), not /tmp/ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             _temp_dir=os.path.join(os.getcwd(), "ray"))


def stop() -> None:
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - the harness kills what is left
        pass


def tutorial(sz: dict) -> dict:
    """child: ray.init() (starts the local Ray instance, as child mode starts child servers) + 5 actors
    ready; independent: 5 more actors on the Ray instance already running."""
    n, sleep = sz["tutorial_agents"], sz["tutorial_sleep"]

    def run(agents) -> float:
        start_t = time.perf_counter()
        refs = [a.reply.remote({"name": "system", "role": "system",
                                "content": {"url": f"page_{i}", "query": "example query"}})
                for i, a in enumerate(agents)]
        answers = [m["content"] for m in ray.get(refs)]
        assert answers == [f"Answer from W{i}" for i in range(n)], answers
        return time.perf_counter() - start_t

    try:
        t = time.perf_counter()
        start()
        agents = [WebAgent.remote(f"W{i}", sleep) for i in range(n)]
        assert all(ray.get([a.ready.remote() for a in agents]))
        child_init = time.perf_counter() - t
        child_run = run(agents)
        for a in agents:
            ray.kill(a)
        t = time.perf_counter()
        agents = [WebAgent.remote(f"W{i}", sleep) for i in range(n)]
        assert all(ray.get([a.ready.remote() for a in agents]))
        indep_init = time.perf_counter() - t
        indep_run = run(agents)
    finally:
        stop()
    return {"metrics": {"child_init": round(child_init, 3), "child_runtime": round(child_run, 3),
                        "indep_init": round(indep_init, 3), "indep_runtime": round(indep_run, 3)},
            "notes": ["child init includes ray.init() (local Ray instance); independent: actors on the running "
                      "instance (no separate servers in Ray)"]}


def sync_call(sz: dict) -> dict:
    start()
    try:
        a = Noop.remote()
        C.time_loop(lambda: ray.get(a.ping.remote()), sz["sync_warmup"])
        lat, wall = C.time_loop(lambda: ray.get(a.ping.remote()), sz["sync_calls"])
        return {"metrics": C.sync_metrics(lat, wall)}
    finally:
        stop()


def pipelined(sz: dict) -> dict:
    start()
    try:
        a = Noop.remote()
        ray.get(a.ping.remote())
        k = sz["pipe_inflight"]

        def one_round() -> int:
            ray.get([a.aping.remote() for _ in range(k)])
            return k

        C.run_rounds(one_round, sz["pipe_warmup_rounds"])
        return {"metrics": {"rate": C.run_rounds(one_round, sz["pipe_rounds"])}}
    finally:
        stop()


def nn(sz: dict) -> dict:
    start()
    try:
        agents = [Noop.remote() for _ in range(sz["nn_agents"])]
        for a in agents:
            C.time_loop(lambda: ray.get(a.ping.remote()), 20)
        out = C.nn_threads(lambda t, i: ray.get(agents[i].ping.remote()), sz["nn_callers"], len(agents),
                           sz["nn_calls"])
        return {"metrics": out, "notes": [f"{len(agents)} actors = {len(agents)} worker processes on one node "
                                          "(Ray has no multi-agent servers)"]}
    finally:
        stop()


def creation(sz: dict) -> dict:
    start()
    try:
        n = min(sz["create_agents"], sz["ray_create_actors"])
        warm = [Noop.remote() for _ in range(2)]
        ray.get([a.ping.remote() for a in warm])
        t = time.perf_counter()
        actors = []
        for first in range(0, n, 100):   # create a batch of 100, then one call to each (as every system)
            batch = [Noop.remote() for _ in range(first, min(n, first + 100))]
            ray.get([a.aping.remote() for a in batch])
            actors += batch
        rate = n / (time.perf_counter() - t)
        notes = [f"{n} actors (each one a new worker process)"]
        return {"metrics": {"rate": round(rate, 1)}, "notes": notes}
    finally:
        stop()


def payload(sz: dict) -> dict:
    start()
    try:
        a = Noop.remote()
        return C.echo_sizes(lambda data: ray.get(a.echo.remote(data)), sz)
    finally:
        stop()


def memory(sz: dict) -> dict:
    """Ray actors are processes: RSS of the actor worker processes / number of actors."""
    start()
    try:
        n = min(sz["memory_agents"], sz["ray_memory_actors"])
        actors = [Noop.remote() for _ in range(n)]
        pids = ray.get([a.pid.remote() for a in actors])
        time.sleep(0.5)
        rss = [C.rss_kb(p) for p in pids]
        pss = [C.pss_kb(p) for p in pids]
        per = sum(rss) / n
        notes = [f"{n} actors, not 10,000: each actor is a worker process of its own (≈{per / 1024:.0f} MB RSS), "
                 f"so 10,000 would need ≈{per * 10_000 / 1024 ** 2:.0f} GB on this 2-core machine"]
        if all(p is not None for p in pss):
            notes.append(f"PSS (shared pages split): {sum(pss) / n / 1024:.1f} MB per actor; raylet, GCS and "
                         "other Ray daemons not counted")
        return {"metrics": {"per_agent_kb": round(per, 2), "server_rss_mb": round(sum(rss) / 1024, 1), "agents": n},
                "notes": notes}
    finally:
        stop()


@ray.remote(num_cpus=0)
class AsyncNoop:
    """An async actor: its methods run on the actor's event loop."""

    async def aping(self, x=None):
        return x


@ray.remote(num_cpus=0)
class Counter:
    """A sync actor with a generator method (Ray streams a generator of an async actor only if it is async)."""

    def count(self, n):
        for i in range(n):
            yield i


def aio(sz: dict) -> dict:
    """Awaited no-op calls from one asyncio caller: ``await a.aping.remote()``, one after another and gathered."""
    import asyncio

    start()
    try:
        a = AsyncNoop.remote()
        n, batch = sz["aio_calls"], sz["aio_batch"]

        async def main() -> dict:
            for _ in range(sz["sync_warmup"]):
                await a.aping.remote(0)
            lat = []
            begin = time.perf_counter()
            for i in range(n):
                t = time.perf_counter()
                await a.aping.remote(i)
                lat.append(time.perf_counter() - t)
            wall = time.perf_counter() - begin
            begin = time.perf_counter()
            for _ in range(max(1, n // batch)):
                await asyncio.gather(*(a.aping.remote(i) for i in range(batch)))
            gathered = max(1, n // batch) * batch / (time.perf_counter() - begin)
            return {**C.sync_metrics(lat, wall), "gathered": round(gathered)}

        return {"metrics": asyncio.run(main())}
    finally:
        stop()


def stream(sz: dict) -> dict:
    """A streaming generator (``num_returns="streaming"``): time to the first item, items/s."""
    start()
    try:
        a = Counter.remote()
        for ref in a.count.options(num_returns="streaming").remote(100):
            ray.get(ref)
        firsts, rates = [], []
        for _ in range(3):
            begin = time.perf_counter()
            refs = iter(a.count.options(num_returns="streaming").remote(sz["stream_items"]))
            ray.get(next(refs))
            firsts.append(time.perf_counter() - begin)
            read = 1 + sum(1 for ref in refs if ray.get(ref) is not None)
            rates.append(read / (time.perf_counter() - begin))
        return {"metrics": {"first_ms": round(sorted(firsts)[1] * 1e3, 2), "rate": round(sorted(rates)[1])}}
    finally:
        stop()


WORKLOADS = {f.__name__: f for f in (tutorial, sync_call, pipelined, nn, creation, payload, memory, aio, stream)}

if __name__ == "__main__":
    C.main(WORKLOADS, info)
