"""How each workload of benchmarks/run.py is measured, as RESULTS.md says it (one paragraph per workload)."""
from __future__ import annotations


def how_measured(sz: dict) -> list[str]:
    return [
        f"**tutorial**: AgentScope's distribution tutorial: {sz['tutorial_agents']} agents whose `reply()` sleeps "
        f"{sz['tutorial_sleep']:g} s. *Initialisation*: construct and `to_dist()` the agents (child mode: no host, "
        "so the system starts its own servers; independent: one server started beforehand, not timed), then one "
        "`ready()` call each, so the agents exist and answer. *Runtime*: one `reply()` each, then read every answer "
        "(the tutorial's `run()`): parallel agents take one sleep, not five.",
        f"**sync no-op call**: {sz['sync_calls']} calls of `ping()` one after another from one thread, after "
        f"{sz['sync_warmup']} warm-up calls (Ray: `ray.get(a.ping.remote())`). calls/s = calls / loop time. The "
        "floor, in the same run: the best of `bench_transport.py`'s bare gRPC designs that answer inline.",
        f"**pipelined**: one caller, one agent: submit {sz['pipe_inflight']} `@async_func` calls, then wait for all "
        f"of them; median calls/s of {sz['pipe_rounds']} rounds after {sz['pipe_warmup_rounds']} warm-up rounds "
        f"(Ray: `ray.get([a.aping.remote() for _ in range({sz['pipe_inflight']})])`).",
        f"**n:n**: {sz['nn_callers']} caller threads in one process, {sz['nn_agents']} agents spread over "
        f"{sz['nn_servers']} servers; each thread calls every agent round-robin, synchronously, {sz['nn_calls']} "
        "calls per thread; calls/s = all calls / wall time. The round-trip row is the same calls' latency.",
        f"**creation**: {sz['create_agents']} agents created on 2 running servers (alternating) in batches of 100: "
        "`to_dist()` for the whole batch, then one asynchronous no-op call (`aping()`) to each and wait for all, "
        "so every agent exists and answers when the clock stops (agentmesh pipelines the creation; AgentScope "
        "0.1.6 creates in a background thread; Ray: `A.remote()` for the batch, then `ray.get` of an `aping` to "
        f"each, at most {sz['ray_create_actors']} actors).",
        f"**payload**: `echo(data)` with 100 KiB, 1 MiB and 10 MiB of random bytes, returned; "
        f"{sz['payload_calls']} calls of 100 KiB after {sz['payload_warmup']} warm-up calls, a fifth as many of "
        "1 MiB and a twenty-fifth of 10 MiB (at least 3); a size a system refuses is in the notes.",
        f"**memory**: a server hosting {sz['memory_agents']:,} idle no-op agents (created in batches of 100, each "
        "answering one call): (server RSS after − RSS with one agent) / agents, from `/proc/PID/status`. Ray: each "
        f"actor is a process: RSS of the actor processes / actors, with {sz['ray_memory_actors']} actors.",
        f"**aio**: one asyncio caller, one agent whose `aping()` is `async def`: {sz['aio_calls']} `await "
        f"agent.aping(i)` one after another (round trip, calls/s), then the same number gathered "
        f"{sz['aio_batch']} at a time with `asyncio.gather` (Ray: an async actor, `await a.aping.remote(i)`).",
        f"**stream**: one generator call yielding {sz['stream_items']:,} small ints, read by the caller: time from "
        "the call to the first item, and items/s over the whole stream; median of 3 (Ray: "
        "`a.count.options(num_returns=\"streaming\").remote(n)`, each item `ray.get`).",
        f"**async threads** (agentmesh): {sz['async_agents']:,} agents on one server each awaiting "
        f"`asyncio.sleep({sz['async_wait']:g})` at once; the server's thread count (`threading.active_count()`) "
        "while they wait. Ray has no equivalent (an actor is a process).",
        f"**registry** (agentmesh): etcd + 4 registered servers; {sz['registry_warm']} `to_dist()` with no host one "
        f"after another (placement through the registry), then {sz['registry_bulk']} more for the rate; then SIGKILL "
        "of one server (time until its lease-bound key is gone) and etcd restarted empty (time until the 3 live "
        "servers are registered again).",
        f"**failover** (agentmesh): {sz['failover_rounds']} rounds of: SIGKILL the server of a registry-placed agent, "
        "then time one `ping()`; it returns from the agent re-created (with its checkpoint) on another server.",
        f"**checkpoint cost** (agentmesh): no-op round trip of an agent with checkpoints on (the default: the state "
        f"rides on every reply) versus `to_dist(..., checkpoint=False)`, {sz['ckpt_calls']} calls each in interleaved "
        "blocks of 100.",
        f"**metrics cost** (agentmesh): no-op round trip to a server without metrics versus one serving "
        f"`/metrics` (`metrics_port=0`), the client recording its calls to the second only; {sz['ckpt_calls']} "
        "calls each in interleaved blocks of 100.",
        f"**tracing cost** (agentmesh): no-op round trip to a server in the same process (so the OpenTelemetry "
        f"SDK records the caller's and the server's span) with tracing off versus on, {sz['ckpt_calls']} calls "
        "each in interleaved blocks of 100; the SDK's batch processor exports to nowhere. Off, a call pays three "
        "attribute checks (two `runtime.tracing is None`, one `span is not None`), timed with `timeit` as "
        "'its checks per call'.",
        f"**scale** (agentmesh, `bench_scale.py`, run once): etcd + 4 registered servers, {sz['scale_agents']:,} "
        "`to_dist()` one after another, one sync call to each, then SIGKILL of the server hosting the most and one "
        f"asynchronous call to each of its agents; the same with {2 * sz['scale_agents']:,} agents over 2 servers "
        f"(the survivor takes the killed one's {sz['scale_agents']:,}); {sz['scale_idle_agents']:,} idle agents on "
        "one server (its RSS growth per agent) and `agentmesh.shutdown()` of them. Times from the SIGKILL.",
        f"**simulation** (agentmesh, `bench_simulation.py`, run once): examples/simulation's game with N = "
        f"{', '.join(f'{n:,}' for n in sz['sim_sizes'])} participants over 4 registered servers: set-up, a round "
        "(median of 3), server memory per participant, a round whose busiest server is SIGKILLed after the calls "
        f"were sent. Then {sz['million']:,} participants (`bench_simulation.py --one-round`): placed, the servers' "
        "RSS growth per participant while all are idle and the caller's per proxy, one round, etcd's database file.",
        f"**durable** (agentmesh, `workloads_durable.py`, run once, for a SQLite file in its default mode (WAL, "
        "synchronous=NORMAL) and a PostgreSQL of its own with fsync and synchronous commits on): the round trip of "
        f"`inc()` (a state change, so a commit per call) on a detached agent beside a plain one, {sz['durable_calls']:,}"
        f" calls each in interleaved blocks of 100; {sz['durable_pipe_calls']} `inc()` calls to each of "
        f"{sz['durable_agents']:,} agents sent without waiting, then every answer read (calls/s), with and without "
        f"a store; {sz['durable_detached']:,} detached agents made on one server by a process that then exits, "
        "found by name (`get_agent`) in this one, their server SIGKILLed, one call each: time until all answered "
        "(each activated from the store on the other server).",
    ]


# -- the report -----------------------------------------------------------------------
