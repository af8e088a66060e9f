"""The arithmetic of docs/scale-plan.md: what 1M agents over many hosts cost etcd, the network and memory.

    python docs/scale_model.py                       # the plan's numbers
    python docs/scale_model.py --agents 5000000      # another size

Every input is a named assumption (the plan says where each comes from);
every output is derived from them, so a changed assumption changes the plan's
numbers in one place.
"""
from __future__ import annotations

import argparse
import math


def model(agents: int, per_server: int, clients: int, etcd_writes: float, record_bytes: int,
          checkpoint_bytes: int, load_interval: float, calls_per_agent: float, rack: int) -> list[tuple[str, str]]:
    servers = math.ceil(agents / per_server)
    rows: list[tuple[str, str]] = [("servers", f"{servers:,} of {per_server:,} agents")]
    # registry: one record per server, one per agent, both under the server's lease
    live = servers * 400 + agents * record_bytes
    rows.append(("etcd live data (servers + agent records)", f"{live / 2**20:,.0f} MiB"))
    rows.append(("creating every agent: agent-record writes", f"{agents:,} = {agents / etcd_writes:,.1f} s of "
                                                                f"etcd write capacity"))
    rows.append(("... as transactions of 100 puts", f"{math.ceil(agents / 100):,}"))
    # watch fan-out: every client process watches servers/ (placement); agents/ is watched by nobody
    updates = servers / load_interval
    rows.append(("server-record updates (load, at most every "
                 f"{load_interval:g} s)", f"{updates:,.0f}/s = {updates / etcd_writes:.1%} of etcd writes"))
    rows.append((f"... delivered to {clients:,} watching clients", f"{updates * clients:,.0f} events/s"))
    # one server lost: its agents' records are deleted with its lease and written again by the targets
    one = per_server * 2
    rows.append((f"one server lost ({per_server:,} agents): registry ops", f"{one:,} = {one / etcd_writes:.2f} s "
                                                                           f"of etcd capacity"))
    storm = per_server * rack * 2
    rows.append((f"a rack lost ({rack} servers, {per_server * rack:,} agents)", f"{storm:,} ops = "
                                                                                 f"{storm / etcd_writes:.1f} s of etcd "
                                                                                 f"capacity"))
    # checkpoints live in the memory of the process that owns each agent
    rows.append(("checkpoints held by owners (all agents)", f"{agents * checkpoint_bytes / 2**30:,.1f} GiB"))
    rows.append((f"... per owner process ({clients:,} owners)", f"{agents * checkpoint_bytes / clients / 2**20:,.0f}"
                                                                 f" MiB"))
    traffic = agents * calls_per_agent * checkpoint_bytes
    rows.append((f"checkpoint bytes on the wire ({calls_per_agent:g} call/s per agent)",
                 f"{traffic / 2**20:,.0f} MiB/s in all, {traffic / servers / 2**20:,.1f} MiB/s per server"))
    moved = per_server * checkpoint_bytes / 2**20
    rows.append(("re-creating one lost server's agents: checkpoint bytes",
                 f"{moved:,.0f} MiB, {moved / max(1, servers - 1):,.1f} MiB to each of {servers - 1:,} others"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1_000_000)
    parser.add_argument("--per-server", type=int, default=10_000, help="agents per server process")
    parser.add_argument("--clients", type=int, default=100, help="processes that own agents and watch the registry")
    parser.add_argument("--etcd-writes", type=float, default=40_000, help="writes/s a 3-member etcd sustains")
    parser.add_argument("--record-bytes", type=int, default=420, help="an agent record: key, signed JSON, MVCC")
    parser.add_argument("--checkpoint-bytes", type=int, default=10_240, help="one agent's state")
    parser.add_argument("--load-interval", type=float, default=0.2, help="seconds between a server's load updates")
    parser.add_argument("--calls-per-agent", type=float, default=0.1, help="calls per second per agent")
    parser.add_argument("--rack", type=int, default=10, help="servers lost together")
    args = parser.parse_args()
    rows = model(args.agents, args.per_server, args.clients, args.etcd_writes, args.record_bytes,
                 args.checkpoint_bytes, args.load_interval, args.calls_per_agent, args.rack)
    print(f"| {args.agents:,} agents | |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
