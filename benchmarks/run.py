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
Logs of the last run: benchmarks/.envs/logs/. What is compared (systems, rows,
targets) and the rendering of the report's parts live in _report.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
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
from _common import RESULT_MARK, kill_marked  # noqa: E402
from _report import (  # noqa: E402,F401  (ROWS: tests/test_benchmarks_smoke.py reads run.ROWS)
    ALL_WORKLOADS,
    BY_KEY,
    ROWS,
    SYSTEMS,
    System,
    how_measured,
    loadavg,
    machine,
    profile_section,
    table,
    targets,
)

LOG_DIR = os.path.join(envs.ENVS, "logs")

#: workloads of minutes that run once even with --repeat
ONCE = {"scale", "simulation", "durable"}

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
    "scale_agents": 10_000, "scale_idle_agents": 100_000, "sim_sizes": [1_000, 10_000, 100_000],
    "million": 1_000_000,
    "aio_calls": 3000, "aio_batch": 100, "stream_items": 20_000, "async_agents": 10_000, "async_wait": 2.0,
    "durable_calls": 2000, "durable_agents": 1000, "durable_pipe_calls": 20, "durable_detached": 10_000,
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
    "scale_agents": 100, "scale_idle_agents": 300, "sim_sizes": [50, 100, 200],
    "million": 300,
    "aio_calls": 20, "aio_batch": 10, "stream_items": 100, "async_agents": 50, "async_wait": 0.2,
    "durable_calls": 100, "durable_agents": 20, "durable_pipe_calls": 3, "durable_detached": 50,
}


# -- running ------------------------------------------------------------------------
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
        leftovers = kill_marked(mark)
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
                if w in s.workloads and not (rep and w in ONCE):
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
        *profile_section(),
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
