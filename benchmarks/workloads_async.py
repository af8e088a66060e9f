"""agentmesh's async and streaming workloads (issue 15), with the same shapes as Ray's in workloads_ray.py.

Run by benchmarks/run.py through workloads_agentmesh.py (same interpreter, same JSON shape).
"""
from __future__ import annotations

import asyncio
import time

import _common as C
from bench_agents import AsyncNoop
from _servers import HOST, launch, shutdown


def aio(sz: dict) -> dict:
    """Awaited no-op calls from one asyncio caller: one after another, and gathered in batches."""
    servers = launch(1, classes=(AsyncNoop,))
    try:
        agent = AsyncNoop("a", to_dist={"host": HOST, "port": servers[0].port})
        n, batch = sz["aio_calls"], sz["aio_batch"]

        async def main() -> dict:
            for _ in range(sz["sync_warmup"]):
                await agent.aping(0)
            lat = []
            start = time.perf_counter()
            for i in range(n):
                t = time.perf_counter()
                await agent.aping(i)
                lat.append(time.perf_counter() - t)
            wall = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(max(1, n // batch)):
                await asyncio.gather(*(agent.aping(i) for i in range(batch)))
            gathered = max(1, n // batch) * batch / (time.perf_counter() - start)
            return {**C.sync_metrics(lat, wall), "gathered": round(gathered)}

        return {"metrics": asyncio.run(main())}
    finally:
        shutdown(servers)


def stream(sz: dict) -> dict:
    """One generator call streaming n small items to the caller: time to the first item, items/s."""
    servers = launch(1, classes=(AsyncNoop,))
    try:
        agent = AsyncNoop("s", to_dist={"host": HOST, "port": servers[0].port})
        list(agent.count(100))                      # warm up
        firsts, rates = [], []
        for _ in range(3):
            start = time.perf_counter()
            items = agent.count(sz["stream_items"])
            next(items)
            firsts.append(time.perf_counter() - start)
            read = 1 + sum(1 for _ in items)
            rates.append(read / (time.perf_counter() - start))
        return {"metrics": {"first_ms": round(sorted(firsts)[1] * 1e3, 2), "rate": round(sorted(rates)[1])}}
    finally:
        shutdown(servers)


def async_threads(sz: dict) -> dict:
    """Threads of one server while n async agents each await I/O (asyncio.sleep) at once."""
    n = sz["async_agents"]
    servers = launch(1, classes=(AsyncNoop,), capacity=n + 1)
    try:
        pin = {"host": HOST, "port": servers[0].port}
        probe = AsyncNoop("probe", to_dist=pin)
        agents = [AsyncNoop(f"a{i}", to_dist=pin) for i in range(n)]
        idle = probe.threads()
        seconds = sz["async_wait"]
        start = time.perf_counter()
        waits = [a.wait(seconds) for a in agents]
        busy = probe.threads()
        for w in waits:
            w.result()
        took = time.perf_counter() - start
        return {"metrics": {"threads_idle": idle, "threads": busy, "agents": n, "wall": round(took, 2)},
                "notes": [f"{n:,} agents each awaiting asyncio.sleep({seconds:g}) at once: all answered in "
                          f"{took:.2f} s; the server's threads while they waited: {busy} ({idle} idle)"]}
    finally:
        shutdown(servers)
