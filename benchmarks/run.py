"""The benchmark harness: every workload for agentmesh and for each peer, one command.

    python benchmarks/run.py                      # full run, all systems -> benchmarks/RESULTS.md
    python benchmarks/run.py --quick              # tiny sizes; peers only if their venvs exist already
    python benchmarks/run.py --only agentmesh     # one system (agentmesh | agentscope | ray; comma list ok)
    python benchmarks/run.py --out /tmp/r.md      # elsewhere ('-': stdout only)
    python benchmarks/run.py --workloads sync_call,pipelined   # a subset of workloads

agentmesh runs in this interpreter's environment (sys.executable, agentmesh
installed). Each peer runs in a venv of its own under benchmarks/.envs/,
created on first use (see envs.py); quick mode never installs. Every
(workload, system) pair runs in a fresh subprocess of that system's
interpreter (workloads_<system>.py), which prints its result as JSON; after it,
every process it started is killed (found by a marker in their environment).
Logs of the last run: benchmarks/.envs/logs/.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import envs  # noqa: E402
from _common import RESULT_MARK  # noqa: E402

LOG_DIR = os.path.join(envs.ENVS, "logs")

FULL = {
    "tutorial_agents": 5, "tutorial_sleep": 5.0,
    "sync_warmup": 200, "sync_calls": 3000,
    "pipe_inflight": 1000, "pipe_rounds": 10, "pipe_warmup_rounds": 2,
    "nn_servers": 2, "nn_agents": 8, "nn_callers": 4, "nn_calls": 1000,
    "create_agents": 500, "ray_create_actors": 30,
    "payload_warmup": 20, "payload_calls": 500,
    "memory_agents": 10_000, "ray_memory_actors": 50,
    "registry_warm": 200, "registry_bulk": 1000,
    "failover_rounds": 5,
    "ckpt_calls": 3000,
}
QUICK = {
    "tutorial_agents": 5, "tutorial_sleep": 0.2,
    "sync_warmup": 5, "sync_calls": 20,
    "pipe_inflight": 50, "pipe_rounds": 2, "pipe_warmup_rounds": 1,
    "nn_servers": 2, "nn_agents": 8, "nn_callers": 4, "nn_calls": 10,
    "create_agents": 10, "ray_create_actors": 3,
    "payload_warmup": 2, "payload_calls": 10,
    "memory_agents": 10, "ray_memory_actors": 3,
    "registry_warm": 5, "registry_bulk": 10,
    "failover_rounds": 1,
    "ckpt_calls": 100,
}


@dataclasses.dataclass
class System:
    key: str
    label: str
    script: str
    workloads: tuple[str, ...]
    peer: bool


COMMON = ("tutorial", "sync_call", "pipelined", "nn", "creation", "payload", "memory")
SYSTEMS = [
    System("agentmesh", "agentmesh", "workloads_agentmesh.py", COMMON + ("registry", "failover", "checkpoint"), False),
    System("agentscope", "AgentScope", "workloads_agentscope.py", COMMON, True),
    System("ray", "Ray", "workloads_ray.py", COMMON, True),
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
    Row("pipelined async no-op calls/s", "pipelined", "rate", "calls/s", HIGHER),
    Row("n:n calls/s (4 callers × 8 agents, 2 servers)", "nn", "rate", "calls/s", HIGHER),
    Row("n:n call round trip", "nn", "rtt", "µs", LOWER),
    Row("agent creation on running servers", "creation", "rate", "agents/s", HIGHER),
    Row("100 KB payload round trip", "payload", "rtt", "µs", LOWER),
    Row("memory per idle agent (server RSS)", "memory", "per_agent_kb", "KB", LOWER),
    Row("registry-resolved to_dist(), per agent", "registry", "to_dist", "ms", LOWER, True),
    Row("registry placements, one thread", "registry", "bulk_rate", "agents/s", HIGHER, True),
    Row("SIGKILL of a server -> its registry key gone", "registry", "key_gone", "s", LOWER, True),
    Row("etcd restarted empty -> every server registered again", "registry", "reregister", "s", LOWER, True),
    Row("failover after SIGKILL: next call returns", "failover", "sigkill", "s", LOWER, True),
    Row("no-op round trip, checkpoints on (default)", "checkpoint", "on", "µs", LOWER, True),
    Row("no-op round trip, checkpoint=False", "checkpoint", "off", "µs", LOWER, True),
    Row("checkpoint cost per call (median on - off)", "checkpoint", "cost", "µs", LOWER, True),
]

#: the issue's targets: (row name, peer, factor): agentmesh rate >= factor x the peer's
TARGETS = [
    ("sync no-op calls/s", "agentscope", 2.0),
    ("sync no-op calls/s", "ray", 1.0),
    ("pipelined async no-op calls/s", "agentscope", 5.0),
    ("pipelined async no-op calls/s", "ray", 1.0),
    ("n:n calls/s (4 callers × 8 agents, 2 servers)", "ray", 1.0),
    ("agent creation on running servers", "agentscope", 5.0),
]


def how_measured(sz: dict) -> list[str]:
    return [
        f"**tutorial**: AgentScope's distribution tutorial: {sz['tutorial_agents']} agents whose `reply()` sleeps "
        f"{sz['tutorial_sleep']:g} s. *Initialisation*: construct and `to_dist()` the agents (child mode: no host, "
        "so the system starts its own servers; independent: one server started beforehand, not timed), then one "
        "`ready()` call each, so the agents exist and answer. *Runtime*: one `reply()` each, then read every answer "
        "(the tutorial's `run()`): parallel agents take one sleep, not five.",
        f"**sync no-op call**: {sz['sync_calls']} calls of `ping()` one after another from one thread, after "
        f"{sz['sync_warmup']} warm-up calls (Ray: `ray.get(a.ping.remote())`). calls/s = calls / loop time.",
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
        f"**100 KB payload**: `echo(data)` with 100 KiB of random bytes, returned; {sz['payload_calls']} calls after "
        f"{sz['payload_warmup']} warm-up calls.",
        f"**memory**: a server hosting {sz['memory_agents']:,} idle no-op agents (created in batches of 100, each "
        "answering one call): (server RSS after − RSS with one agent) / agents, from `/proc/PID/status`. Ray: each "
        f"actor is a process: RSS of the actor processes / actors, with {sz['ray_memory_actors']} actors.",
        f"**registry** (agentmesh): etcd + 4 registered servers; {sz['registry_warm']} `to_dist()` with no host one "
        f"after another (placement through the registry), then {sz['registry_bulk']} more for the rate; then SIGKILL "
        "of one server (time until its lease-bound key is gone) and etcd restarted empty (time until the 3 live "
        "servers are registered again).",
        f"**failover** (agentmesh): {sz['failover_rounds']} rounds of: SIGKILL the server of a registry-placed agent, "
        "then time one `ping()`; it returns from the agent re-created (with its checkpoint) on another server.",
        f"**checkpoint cost** (agentmesh): no-op round trip of an agent with checkpoints on (the default: the state "
        f"rides on every reply) versus `to_dist(..., checkpoint=False)`, {sz['ckpt_calls']} calls each in interleaved "
        "blocks of 100.",
    ]


# -- running ------------------------------------------------------------------------
def _marked_pids(mark: str) -> list[int]:
    """Processes whose environment carries mark: everything one workload run started."""
    needle = mark.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _kill_marked(mark: str) -> int:
    killed = 0
    for _ in range(5):   # a dying process tree can spawn a last child: look again
        pids = _marked_pids(mark)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.2)
    return killed


def python_of(system: System) -> str:
    return sys.executable if system.key == "agentmesh" else envs.python_of(system.key)


def run_workload(system: System, workload: str, sizes: dict, timeout: float, log) -> dict:
    """One workload of one system in a fresh subprocess; its result dict (with "error" on failure)."""
    mark = f"AGENTMESH_BENCH_RUN={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    env["AGENTMESH_BENCH_RUN"] = mark.split("=", 1)[1]
    if system.peer:
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
    os.makedirs(LOG_DIR, exist_ok=True)
    err_path = os.path.join(LOG_DIR, f"{system.key}-{workload}.log")
    cmd = [python_of(system), os.path.join(HERE, system.script), workload, json.dumps(sizes)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bench-{system.key}-") as cwd, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        leftovers = _kill_marked(mark)
    took = time.monotonic() - started
    result: dict = {}
    for line in out.splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
    if timed_out:
        result.setdefault("error", f"timed out after {timeout:.0f} s")
    elif not result:
        result["error"] = f"no result (exit {proc.returncode}); see {os.path.relpath(err_path, ROOT)}"
    result["seconds"] = round(took, 1)
    status = result.get("error") or "ok"
    log(f"  {system.key:<10} {workload:<11} {took:6.1f} s  {status}"
        + (f"  (killed {leftovers} leftover process(es))" if leftovers else ""))
    return result


def merge(reps: list[dict]) -> dict:
    """Several runs of one (workload, system): the median of every number; failed runs are left out."""
    ok = [r for r in reps if "error" not in r and "metrics" in r]
    if not ok:
        return reps[-1]
    if len(ok) == 1:
        return dict(ok[0], repeats=f"1 of {len(reps)}" if len(reps) > 1 else 1)

    def med(values: list):
        if all(isinstance(v, dict) for v in values):
            return {k: med([v[k] for v in values if k in v]) for k in values[0]}
        nums = [v for v in values if isinstance(v, (int, float))]
        return statistics.median(nums) if nums else values[0]

    out = dict(ok[-1])
    out["metrics"] = med([r["metrics"] for r in ok])
    out["repeats"] = f"{len(ok)} of {len(reps)}"
    return out


# -- the report -----------------------------------------------------------------------
def fmt(x) -> str:
    if x is None:
        return "—"
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
            adv = advantage(row, am_med, med)
            cells += [fmt(med), fmt(p99) if p99 is not None else "—", fmt_ratio(adv)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(results: dict, status: dict) -> list[str]:
    by_name = {r.name: r for r in ROWS}
    out = []
    for name, peer, factor in TARGETS:
        row = by_name[name]
        am = value_of(results.get(("agentmesh", row.workload)), row)[0]
        pv = value_of(results.get((peer, row.workload)), row)[0]
        want = f"agentmesh ≥ {factor:g}× {BY_KEY[peer].label}" if factor != 1 else f"agentmesh ≥ {BY_KEY[peer].label}"
        if am is None or pv is None:
            why = status.get(peer) or status.get("agentmesh") or "not measured"
            out.append(f"- {name}: {want} — **unknown** ({why})")
            continue
        ratio = am / pv
        verdict = "met" if ratio >= factor else "missed"
        out.append(f"- {name}: {want} — **{verdict}**: agentmesh {fmt(am)} vs {BY_KEY[peer].label} {fmt(pv)} "
                   f"= {ratio:.2f}×")
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


def _profile_section() -> list[str]:
    """benchmarks/PROFILE.md: where the time goes for the targets that are missed."""
    path = os.path.join(HERE, "PROFILE.md")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [f.read().rstrip(), ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; peers only if their venvs exist")
    parser.add_argument("--only", default="", help="agentmesh | agentscope | ray (comma-separated list ok)")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"), help="Markdown report ('-': stdout only)")
    parser.add_argument("--workloads", default="", help="comma-separated subset of: " + ", ".join(ALL_WORKLOADS))
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every (workload, system) pair N times, interleaved; report the median of each number")
    parser.add_argument("--no-install", action="store_true", help="never create peer venvs")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per workload run (default 60 quick, 900 full)")
    args = parser.parse_args(argv)

    only = [x.strip() for x in args.only.split(",") if x.strip()]
    for key in only:
        if key not in BY_KEY:
            parser.error(f"--only: unknown system {key!r} (choose from {', '.join(BY_KEY)})")
    chosen = [s for s in SYSTEMS if not only or s.key in only]
    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()] or list(ALL_WORKLOADS)
    for w in wanted:
        if w not in ALL_WORKLOADS:
            parser.error(f"--workloads: unknown workload {w!r}")
    sizes = QUICK if args.quick else FULL
    timeout = args.timeout or (60.0 if args.quick else 900.0)
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.monotonic()
    load_start = loadavg()
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    status: dict[str, str] = {}
    for s in SYSTEMS:
        if s not in chosen:
            status[s.key] = f"not run (--only {','.join(only)})"
    peer_versions: dict[str, dict] = {}
    for s in chosen:
        if not s.peer:
            continue
        ok, reason = envs.ensure(s.key, install=not (args.quick or args.no_install), log=log)
        if ok:
            peer_versions[s.key] = envs.versions(s.key)
        elif args.quick or args.no_install:
            status[s.key] = "skipped: venv not created (quick mode / --no-install never installs)"
        else:
            status[s.key] = f"not installed: {reason}"
        if not ok:
            log(f"[run] {s.key}: {status[s.key]}")
    runnable = [s for s in chosen if s.key not in status]

    results: dict[tuple[str, str], dict] = {}
    log(f"[run] {'quick' if args.quick else 'full'} run: {', '.join(s.key for s in runnable) or 'nothing'}; "
        f"workloads: {', '.join(wanted)}")
    runs: dict[tuple[str, str], list[dict]] = {}
    for rep in range(max(1, args.repeat)):
        if args.repeat > 1:
            log(f"[run] repetition {rep + 1} of {args.repeat}")
        for w in wanted:   # interleaved by workload, so that load from elsewhere hits every system alike
            for s in runnable:
                if w in s.workloads:
                    runs.setdefault((s.key, w), []).append(run_workload(s, w, sizes, timeout, log))
    results = {k: merge(v) for k, v in runs.items()}
    elapsed = time.monotonic() - started

    am_info = next((r.get("info", {}) for (k, _), r in results.items() if k == "agentmesh" and r.get("info")), {})
    if not am_info:
        try:
            import grpc
            am_info = {"grpcio": grpc.__version__}
        except ImportError:
            pass
    for s in SYSTEMS[1:]:
        got = next((r.get("info") for (k, _), r in results.items() if k == s.key and r.get("info")), None)
        if got:
            peer_versions[s.key] = {s.key: got.get(s.key), "grpcio": got.get("grpcio"), "python": got.get("python")}
    labels = {s.key: (f"{s.label} {peer_versions[s.key].get(s.key)}" if peer_versions.get(s.key, {}).get(s.key)
                      else s.label) for s in SYSTEMS}

    md = [
        "# agentmesh benchmarks",
        "",
        f"Generated by `{command}` on {date}; the run took {elapsed / 60:.1f} min"
        f" ({'quick: tiny sizes, numbers are not meaningful' if args.quick else 'full sizes'}"
        f"{f'; every number is the median of {args.repeat} runs' if args.repeat > 1 else ''}).",
        "Re-run: `python benchmarks/run.py` (peers' venvs are created under `benchmarks/.envs/` on first use);"
        " `--quick` for tiny sizes, `--only agentmesh` for agentmesh alone.",
        "",
        "## Machine",
        "",
        *machine(am_info, peer_versions, (load_start, loadavg())),
        "",
        "## Results",
        "",
        "Medians (and p99 where a workload has a latency distribution). **agentmesh vs X** is how many times "
        "better agentmesh is than X: X's time ÷ agentmesh's time for times and sizes, agentmesh's rate ÷ X's "
        "rate for rates. Above 1× agentmesh wins, below 1× it loses. *n/a*: agentmesh-only workload."
        + (" With `--repeat`, every number (median, p99, rate) is the median of that number over the runs."
           if args.repeat > 1 else ""),
        "",
        *table(results, status, labels),
        "",
        "## Targets",
        "",
        "The issue's targets, judged on the medians above.",
        "",
        *targets(results, status),
        "",
        *_profile_section(),
        "## Notes",
        "",
    ]
    notes = []
    for s in SYSTEMS:
        if s.key in status and s in chosen:
            notes.append(f"- {s.label}: {status[s.key]}")
        for w in wanted:
            r = results.get((s.key, w))
            if not r:
                continue
            if "error" in r:
                notes.append(f"- {s.label}, {w}: **failed**: {r['error']} "
                             f"(log: `{os.path.relpath(os.path.join(LOG_DIR, f'{s.key}-{w}.log'), ROOT)}`)")
            rep = r.get("repeats")
            if isinstance(rep, str) and rep.split(" of ")[0] != rep.split(" of ")[-1]:
                notes.append(f"- {s.label}, {w}: only {rep} runs succeeded; the numbers are theirs")
            for n in r.get("notes", []):
                notes.append(f"- {s.label}, {w}: {' '.join(str(n).split())}")
    md += notes or ["- none"]
    md += ["", "## How each workload is measured", "",
           "The same code shape for every system (see `benchmarks/workloads_*.py`); all traffic on 127.0.0.1; "
           "every (workload, system) pair in a fresh process.", ""]
    md += [f"- {line}" for line in how_measured(sizes)]
    md.append("")
    text = "\n".join(md)

    os.makedirs(LOG_DIR, exist_ok=True)
    with open(os.path.join(LOG_DIR, "last-results.json"), "w") as f:
        json.dump({"command": command, "date": date, "sizes": sizes, "status": status,
                   "results": {f"{k}/{w}": r for (k, w), r in results.items()}}, f, indent=1)
    if args.out != "-":
        with open(args.out, "w") as f:
            f.write(text)
        log(f"[run] wrote {args.out} in {elapsed:.0f} s")
    print(text)
    failed = [f"{k}/{w}" for (k, w), r in results.items() if "error" in r and k == "agentmesh"]
    if failed:
        log(f"[run] agentmesh workloads failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
