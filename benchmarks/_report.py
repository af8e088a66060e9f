"""The report of benchmarks/run.py: what is compared, and the Markdown it is shown in.

The systems and workloads, the table's rows and targets, and the rendering of RESULTS.md's parts (results,
verdicts, machine); how each workload is measured is _measured.py's. run.py runs them and puts the report together.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import envs  # noqa: E402
from _measured import how_measured  # noqa: E402,F401 - run.py takes it from here


@dataclasses.dataclass
class System:
    key: str
    label: str
    script: str
    workloads: tuple[str, ...]
    peer: bool


COMMON = ("tutorial", "sync_call", "pipelined", "nn", "creation", "payload", "memory")
#: what AgentScope 0.1.6 cannot do (async methods, streams) and Ray can
WITH_RAY = ("aio", "stream")
SYSTEMS = [
    System("agentmesh", "agentmesh", "workloads_agentmesh.py",
           COMMON + WITH_RAY + ("async_threads", "registry", "failover", "checkpoint", "metrics", "tracing", "scale",
                                "simulation", "durable"), False),
    System("agentscope", "AgentScope", "workloads_agentscope.py", COMMON, True),
    System("ray", "Ray", "workloads_ray.py", COMMON + WITH_RAY, True),
]
BY_KEY = {s.key: s for s in SYSTEMS}
ALL_WORKLOADS = SYSTEMS[0].workloads

LOWER, HIGHER = "lower", "higher"


@dataclasses.dataclass
class Row:
    name: str
    workload: str
    metric: str
    unit: str
    better: str
    agentmesh_only: bool = False


#: the table, in order. The names are stable: tests/test_benchmarks_smoke.py looks for them.
ROWS = [
    Row("tutorial: child-mode initialisation", "tutorial", "child_init", "s", LOWER),
    Row("tutorial: child-mode runtime", "tutorial", "child_runtime", "s", LOWER),
    Row("tutorial: independent initialisation", "tutorial", "indep_init", "s", LOWER),
    Row("tutorial: independent runtime", "tutorial", "indep_runtime", "s", LOWER),
    Row("sync no-op call round trip", "sync_call", "rtt", "µs", LOWER),
    Row("sync no-op calls/s", "sync_call", "rate", "calls/s", HIGHER),
    Row("bare gRPC floor: the best inline ping-pong design", "sync_call", "floor", "µs", LOWER, True),
    Row("sync round trip / bare gRPC floor", "sync_call", "over_floor", "×", LOWER, True),
    Row("pipelined async no-op calls/s", "pipelined", "rate", "calls/s", HIGHER),
    Row("n:n calls/s (4 callers × 8 agents, 2 servers)", "nn", "rate", "calls/s", HIGHER),
    Row("n:n call round trip", "nn", "rtt", "µs", LOWER),
    Row("agent creation on running servers", "creation", "rate", "agents/s", HIGHER),
    Row("100 KB payload round trip", "payload", "rtt", "µs", LOWER),
    Row("1 MB payload round trip", "payload", "rtt_1mb", "µs", LOWER),
    Row("10 MB payload round trip", "payload", "rtt_10mb", "µs", LOWER),
    Row("memory per idle agent (server RSS)", "memory", "per_agent_kb", "KB", LOWER),
    Row("awaited async no-op call round trip (one asyncio caller)", "aio", "rtt", "µs", LOWER),
    Row("awaited async no-op calls/s, one after another", "aio", "rate", "calls/s", HIGHER),
    Row("awaited async no-op calls/s, gathered in batches", "aio", "gathered", "calls/s", HIGHER),
    Row("streamed reply: time to the first item", "stream", "first_ms", "ms", LOWER),
    Row("streamed reply: items/s", "stream", "rate", "items/s", HIGHER),
    Row("server threads, 10,000 async agents awaiting I/O at once", "async_threads", "threads", "threads", LOWER,
        True),
    Row("registry-resolved to_dist(), per agent", "registry", "to_dist", "ms", LOWER, True),
    Row("registry placements, one thread", "registry", "bulk_rate", "agents/s", HIGHER, True),
    Row("SIGKILL of a server -> its registry key gone", "registry", "key_gone", "s", LOWER, True),
    Row("etcd restarted empty -> every server registered again", "registry", "reregister", "s", LOWER, True),
    Row("failover after SIGKILL: next call returns", "failover", "sigkill", "s", LOWER, True),
    Row("no-op round trip, checkpoints on (default)", "checkpoint", "on", "µs", LOWER, True),
    Row("no-op round trip, checkpoint=False", "checkpoint", "off", "µs", LOWER, True),
    Row("checkpoint cost per call (median on - off)", "checkpoint", "cost", "µs", LOWER, True),
    Row("no-op round trip, metrics off", "metrics", "off", "µs", LOWER, True),
    Row("no-op round trip, metrics on (server and client)", "metrics", "on", "µs", LOWER, True),
    Row("metrics cost per call (median on vs off)", "metrics", "cost", "%", LOWER, True),
    Row("no-op round trip, tracing off (in-process server)", "tracing", "off", "µs", LOWER, True),
    Row("no-op round trip, tracing on (both spans recorded)", "tracing", "on", "µs", LOWER, True),
    Row("tracing cost per call (median on vs off)", "tracing", "cost", "%", LOWER, True),
    Row("tracing off: its checks per call", "tracing", "off_ns", "ns", LOWER, True),
    Row("tracing off: its checks' share of the round trip", "tracing", "off_share", "%", LOWER, True),
    Row("scale: 10,000 to_dist() through the registry (4 servers)", "scale", "place_rate", "agents/s", HIGHER, True),
    Row("scale: one sync call to each of 10,000 agents", "scale", "call_rate", "calls/s", HIGHER, True),
    Row("scale: SIGKILL of a server of 2,500 agents -> all answered", "scale", "quarter_all", "s", LOWER, True),
    Row("scale: SIGKILL of a server of 10,000 agents -> first answer", "scale", "mass_first", "s", LOWER, True),
    Row("scale: SIGKILL of a server of 10,000 agents -> all answered", "scale", "mass_all", "s", LOWER, True),
    Row("scale: answers wrong or lost in those failovers", "scale", "mass_wrong", "answers", LOWER, True),
    Row("scale: WARNING lines of a 10,000-agent failover", "scale", "mass_warnings", "lines", LOWER, True),
    Row("scale: agentmesh.shutdown() with 100,000 owned agents", "scale", "shutdown", "s", LOWER, True),
    Row("scale: server RSS per idle agent, 100,000 on one server", "scale", "idle_kb", "KB", LOWER, True),
    Row("scale: client RSS per proxy", "scale", "proxy_kb", "KB", LOWER, True),
] + [Row(f"durable ({store}): {what}", "durable", f"{kind}_{key}", unit, better, True)
     for kind, store in (("sqlite", "SQLite"), ("pg", "PostgreSQL"))
     for what, key, unit, better in (
         ("inc() round trip without a store", "rtt_plain", "µs", LOWER),
         ("inc() round trip, durable (committed before the reply)", "rtt", "µs", LOWER),
         ("durable round trip / plain round trip", "ratio", "×", LOWER),
         ("pipelined inc() over 1,000 agents without a store", "pipe_plain", "calls/s", HIGHER),
         ("pipelined inc() over 1,000 durable agents", "pipe", "calls/s", HIGHER),
         ("SIGKILL of a server of 10,000 detached agents, creator gone -> all answered", "back", "s", LOWER),
         ("answers wrong in that re-activation", "back_wrong", "answers", LOWER),
         ("store size, 1,000 agents of ~10 KB after 20 calls each", "store_mb", "MB", LOWER),
         ("server RSS, 1,000 agents of ~10 KB after 20 calls each", "rss_mb", "MB", LOWER))
] + [Row(f"simulation N = {n}: {what}", "simulation", f"{key}{i}", unit, LOWER, True)
     for i, n in enumerate(("1,000", "10,000", "100,000"))
     for what, key, unit in (("set-up", "setup", "s"), ("round", "round", "s"),
                             ("server memory per participant", "kb", "KB"),
                             ("round with a server SIGKILLed", "kill", "s"))
] + [Row(f"1,000,000 agents: {what}", "simulation", key, unit, LOWER, True) for what, key, unit in (
    ("placed through the registry (4 servers)", "m_setup", "s"), ("one round of the guess game", "m_round", "s"),
    ("server memory per idle participant", "m_idle_kb", "KB"), ("client memory per proxy", "m_client_kb", "KB"),
    ("etcd database", "m_etcd_mb", "MB"))]

#: the issues' targets: (row name, peer, factor): agentmesh >= factor x the peer (a time: the peer's / agentmesh's)
TARGETS = [(row, "agentscope", 1.5) for row in ("100 KB payload round trip", "1 MB payload round trip",
                                                 "10 MB payload round trip")] + [
    ("sync no-op calls/s", "agentscope", 1.6), ("sync no-op calls/s", "ray", 2.0),
    ("pipelined async no-op calls/s", "agentscope", 5.0), ("pipelined async no-op calls/s", "ray", 10.0),
    ("n:n calls/s (4 callers × 8 agents, 2 servers)", "ray", 3.0), ("agent creation on running servers", "agentscope", 5.0),
    ("tutorial: child-mode initialisation", "agentscope", 1.0)]

#: the issue's goals for agentmesh alone: (row name, at least or at most, value)
GOALS = [
    ("metrics cost per call (median on vs off)", "≤", 5.0), ("sync round trip / bare gRPC floor", "≤", 1.25),
    ("scale: 10,000 to_dist() through the registry (4 servers)", "≥", 10_000),
    ("scale: SIGKILL of a server of 10,000 agents -> all answered", "≤", 2.0),
    ("scale: answers wrong or lost in those failovers", "≤", 0), ("scale: WARNING lines of a 10,000-agent failover", "≤", 1),
    ("scale: agentmesh.shutdown() with 100,000 owned agents", "≤", 5.0),
    ("scale: server RSS per idle agent, 100,000 on one server", "≤", 2.0),
    ("1,000,000 agents: one round of the guess game", "≤", 60.0),
    ("1,000,000 agents: server memory per idle participant", "≤", 1.5),
] + [(f"durable ({store}): {what}", sign, value) for store, ratio, rate in (("SQLite", 1.5, 5_000),
                                                                           ("PostgreSQL", 2.0, 3_000))
     for what, sign, value in (("durable round trip / plain round trip", "≤", ratio),
                               ("pipelined inc() over 1,000 durable agents", "≥", rate),
                               ("SIGKILL of a server of 10,000 detached agents, creator gone -> all answered", "≤",
                                3.0))]


def fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, int):   # counts (answers, lines, agents)
        return f"{x:,}"
    x = float(x)
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_ratio(x: float | None) -> str:
    if not x:
        return "—"
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def value_of(result: dict | None, row: Row) -> tuple[float | None, float | None]:
    """(median, p99) of a row's metric in a result; p99 None for single values and rates."""
    if not result or "metrics" not in result:
        return None, None
    v = result["metrics"].get(row.metric)
    if isinstance(v, dict):
        return v.get("median"), v.get("p99")
    return v, None


def advantage(row: Row, am: float | None, peer: float | None) -> float | None:
    """How many times better agentmesh is (> 1: agentmesh wins), whatever the metric's direction."""
    if am is None or peer is None or am <= 0 or peer <= 0:
        return None
    return am / peer if row.better == HIGHER else peer / am


def cell_status(system: System, status: dict, result: dict | None) -> str | None:
    """Why a system has no number for a workload, or None if it has one."""
    if system.key in status:
        why = status[system.key]
        return "not installed (see notes)" if why.startswith("not installed") else why
    if result is None:
        return "not run (--workloads)"
    if "error" in result:
        return "failed (see notes)"
    return None


def table(results: dict, status: dict, labels: dict) -> list[str]:
    head = ["workload", "unit", "agentmesh median", "agentmesh p99"]
    for s in SYSTEMS[1:]:
        head += [f"{labels[s.key]} median", f"{labels[s.key]} p99", f"agentmesh vs {s.label}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    am_sys = SYSTEMS[0]
    for row in ROWS:
        am_res = results.get(("agentmesh", row.workload))
        am_med, am_p99 = value_of(am_res, row)
        why = cell_status(am_sys, status, am_res)
        cells = [row.name, row.unit, why or fmt(am_med), "" if why else (fmt(am_p99) if am_p99 is not None else "—")]
        for s in SYSTEMS[1:]:
            if row.agentmesh_only:
                cells += ["n/a", "", ""]
                continue
            res = results.get((s.key, row.workload))
            why = cell_status(s, status, res)
            if why:
                cells += [why, "", ""]
                continue
            med, p99 = value_of(res, row)
            cells += [fmt(med), fmt(p99) if p99 is not None else "—", fmt_ratio(advantage(row, am_med, med))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(results: dict, status: dict) -> list[str]:
    by_name = {r.name: r for r in ROWS}
    out = []
    for name, peer, factor in TARGETS:
        row = by_name[name]
        am = value_of(results.get(("agentmesh", row.workload)), row)[0]
        pv = value_of(results.get((peer, row.workload)), row)[0]
        want = f"agentmesh ≥ {factor:g}× {BY_KEY[peer].label}" + (" (in speed)" if row.better == LOWER else "")
        if am is None or pv is None:
            why = status.get(peer) or status.get("agentmesh") or "not measured"
            out.append(f"- {name}: {want} — **unknown** ({why})")
            continue
        ratio = am / pv if row.better == HIGHER else pv / am
        verdict = "met" if ratio >= factor else "missed"
        out.append(f"- {name}: {want} — **{verdict}**: agentmesh {fmt(am)} vs {BY_KEY[peer].label} {fmt(pv)} "
                   f"= {ratio:.2f}×")
    for name, op, goal in GOALS:
        row = by_name[name]
        am = value_of(results.get(("agentmesh", row.workload)), row)[0]
        if am is None:
            out.append(f"- {name}: {op} {fmt(goal)} {row.unit} — **unknown** ({status.get('agentmesh') or 'not measured'})")
            continue
        met = am >= goal if op == "≥" else am <= goal
        out.append(f"- {name}: {op} {fmt(goal)} {row.unit} — **{'met' if met else 'missed'}**: {fmt(am)}")
    return out


def machine(am_info: dict, peer_versions: dict, loads: tuple[str, str]) -> list[str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    commit = "unknown"
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or commit
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "agentmesh"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if dirty:
            commit += " (with uncommitted changes in agentmesh/)"
    except (OSError, subprocess.SubprocessError):
        pass
    lines = [
        f"- CPU: {cpu}; {os.cpu_count()} logical cores ({usable} usable by this run)",
        f"- memory: {mem}; kernel {platform.system()} {platform.release()} ({platform.machine()})",
        f"- Python {platform.python_version()} ({sys.executable})",
        f"- agentmesh {am_info.get('agentmesh', '?')} at commit {commit}, grpcio {am_info.get('grpcio', '?')}",
    ]
    for s in SYSTEMS[1:]:
        v = peer_versions.get(s.key)
        if v:
            extra = ", ".join(f"{k} {val}" for k, val in v.items() if k != s.key)
            venv = os.path.relpath(envs.env_dir(s.key), ROOT)
            lines.append(f"- {s.label} {v.get(s.key, '?')} ({extra}; venv {venv})")
        else:
            lines.append(f"- {s.label}: no version (not installed or not run)")
    lines.append(f"- load average (1, 5, 15 min) at start: {loads[0]}; at end: {loads[1]} "
                 "(other work on the machine shows up here)")
    try:
        before = float(loads[0].split(",")[0])
    except ValueError:
        before = 0.0
    if before > 0.5 * (os.cpu_count() or 1):
        lines.append(f"- **the machine was busy**: 1-minute load {before:.1f} on {os.cpu_count()} cores before the "
                     "run started (other work): expect noise of tens of percent; compare systems within one run "
                     "(the harness interleaves them workload by workload), and use `--repeat`")
    return lines


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return ", ".join(f.read().split()[:3])
    except OSError:
        return "?"


def profile_section() -> list[str]:
    """benchmarks/PROFILE.md: where the time goes for the targets that are missed."""
    path = os.path.join(HERE, "PROFILE.md")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [f.read().rstrip(), ""]
