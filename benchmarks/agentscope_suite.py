"""AgentScope's own distributed-mode test file, ported by renaming, run against agentmesh: one table.

    python benchmarks/agentscope_suite.py --source PATH/TO/agentscope/tests/rpc_agent_test.py
    python benchmarks/agentscope_suite.py --source ... --keep /tmp/as-suite   # keep variants and logs

What it measures. agentmesh claims that AgentScope 0.1.6 code in distributed
mode runs after renaming ``agentscope`` to ``agentmesh``. The strongest
outside evidence is AgentScope's own test of that mode, ``tests/rpc_agent_test.py``.
Get it from AgentScope's git (it is not in the PyPI package, and it is not
copied into this repository):

    git clone https://github.com/modelscope/agentscope && cd agentscope && git checkout v0.1.6
    # the file: tests/rpc_agent_test.py

From that file this script builds three variants by text transformation, in a
temporary folder (or ``--keep DIR``), runs each with pytest in a subprocess of
this interpreter, and prints a Markdown table: one row per test, one column per
variant, and a total per column.

1. strict: mechanical renames only: ``agentscope`` -> ``agentmesh``,
   ``RetryExpential`` -> ``RetryExponential``, ``sequentialpipeline`` ->
   ``sequential_pipeline`` (the names at v0.1.6), and every fixed port given as
   ``port=NNNN`` (NNNN >= 1024) -> a free port picked at run time (the same
   literal within one test is the same port, as the test expects). A port in a
   dict naming a host that does not exist (``"port": 1234`` with host
   ``not_exist``) is left: nothing binds it.
2. stand-ins: strict, plus stand-ins for the names the file imports from
   outside AgentScope's distributed mode: ``DialogAgent``,
   ``agentmesh.manager``'s ``ASManager`` and ``MonitorManager``, and
   ``QuotaExceededError``. The real name is used if agentmesh has it; otherwise
   using the stand-in raises ImportError naming it. tearDown's ASManager flush
   is made non-fatal (that stand-in's ImportError only). Nothing else changes;
   setUp is unchanged (``agentmesh.init(save_dir=...)`` creates the folder).
3. adapted: stand-ins, plus the three documented deliberate differences:
   ``file_dir=`` (the test's data folder) on the launcher of
   ``test_agent_server_management_funcs`` (a server serves files only under its
   file root), that test's DialogAgent/model-config part dropped (from
   ``# test existing model config`` up to ``self.assertTrue(client.delete_all_agent())``),
   and ``@agentmesh.rpc.sync_func(interleave=True)`` on ``custom_sync_func``
   (calls of one agent run in order unless a method opts out).

Every transformation checks that its anchor text is there exactly as expected
and stops the script otherwise (exit status 2): a different version of the
file is reported, not silently mis-ported. The fixtures the file reads
(``data/image.png``, ``custom/test_model_config.json``,
``custom/custom_agent.py``) are written by this script. The file imports
``loguru``; if this interpreter cannot import it, it is installed with
``pip install --target`` into the temporary folder (PyPI must be reachable).

Exit status 0 whatever the tests do (this is a measurement); non-zero only if
the harness itself breaks. Every process a run starts is ended: pytest runs in
its own session with a timeout, and afterwards its process group and every
process carrying the run's marker in its environment are killed by pid.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = ("strict", "stand-ins", "adapted")
KEEP_MARK = ".agentscope_suite"      # a --keep folder this script made (so it may clear its own subfolders)
RUN_MARK_VAR = "AGENTSCOPE_SUITE_RUN"   # in every process a run starts: leftovers are found by it
TEST_FILE = "rpc_agent_test.py"
CELL_WIDTH = 90

from _common import kill_marked  # noqa: E402 - beside this script
from _agentscope_port import (  # noqa: E402 - beside this script
    HarnessError, make_adapted, make_standins, make_strict, test_names, write_fixtures,
)


def base_env(extra_path: list[str]) -> dict[str, str]:
    """The environment of the runs: agentmesh from this checkout, no AGENTMESH_* settings from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    paths = [ROOT, *extra_path] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _python(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def ensure_loguru(work: str) -> list[str]:
    """Extra PYTHONPATH entries under which loguru imports (installing it into work/site if needed)."""
    if _python("import loguru", base_env([])).returncode == 0:
        return []
    site = os.path.join(work, "site")
    if _python("import loguru", base_env([site])).returncode == 0:
        return [site]
    print(f"loguru is not importable here: pip install --target {site} loguru", file=sys.stderr)
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--no-input", "--target", site, "loguru"],
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError("pip install loguru took longer than 300 s") from exc
    if done.returncode != 0 or _python("import loguru", base_env([site])).returncode != 0:
        raise HarnessError(f"could not install loguru (pip exit {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-500:]}")
    return [site]


# ---------------------------------------------------------------- running and parsing

@dataclass
class Run:
    """The outcome of one variant's pytest run."""

    outcomes: dict[str, tuple[bool, str]] = field(default_factory=dict)   # test -> (passed, first E line)
    collection_error: str = ""
    note: str = ""
    seconds: float = 0.0


def end_processes(leader: int, mark: str) -> int:
    """Kill what a run left behind: its process group, then every process with its marker; how many."""
    try:
        os.killpg(leader, signal.SIGKILL)
    except OSError:
        pass
    return kill_marked(f"{RUN_MARK_VAR}={mark}")


SUMMARY = re.compile(r"^(PASSED|FAILED|ERROR) (\S+?)(?: - .*)?$")
SECTION = re.compile(r"^_{3,} (?:ERROR at (?:setup|teardown) of |ERROR collecting )?(\S+) _{3,}$")


def _shorten(line: str, folder: str) -> str:
    line = line[1:].strip() if line.startswith("E ") else line.strip()
    line = line.replace(folder + os.sep, "." + os.sep)
    line = re.sub(r" \([^()]*\.py\)", "", line)   # "cannot import name X from M (/path/to/M.py)"
    line = re.sub(r"\s+", " ", line).replace("|", "\\|")
    return line if len(line) <= CELL_WIDTH else line[:CELL_WIDTH - 1] + "…"


def parse(output: str, folder: str) -> Run:
    """Per-test outcome from pytest -rA output: passed, or failed with its section's first 'E ' line."""
    first_e: dict[str, str] = {}
    section = ""
    for line in output.splitlines():
        header = SECTION.match(line)
        if header:   # "Class.test_x" for a test, the file's name for its collection error
            name = header.group(1)
            section = name if "ERROR collecting" in line else name.rsplit(".", 1)[-1]
            continue
        if line.startswith("====") or (line.startswith("-----") and "Captured" in line):
            section = ""   # the report's next part, or a test's captured output
        if section and line.startswith("E ") and section not in first_e:
            first_e[section] = _shorten(line, folder)
    run = Run()
    for line in output.splitlines():
        found = SUMMARY.match(line)
        if not found:
            continue
        status, nodeid = found.groups()
        if "::" not in nodeid:   # a collection error of the module
            run.collection_error = first_e.get(nodeid, "") or _shorten(line, folder)
            continue
        name = nodeid.rsplit("::", 1)[-1]
        passed_before, why_before = run.outcomes.get(name, (True, ""))
        if status == "PASSED":
            run.outcomes[name] = (passed_before, why_before)
        else:
            run.outcomes[name] = (False, why_before or first_e.get(name, "") or status)
    return run


def run_variant(folder: str, env: dict[str, str], test_timeout: float, run_timeout: float) -> Run:
    """pytest on folder/rpc_agent_test.py in a subprocess (cwd = folder); the parsed outcome."""
    mark = uuid.uuid4().hex
    env = dict(env, **{RUN_MARK_VAR: mark})
    cmd = [sys.executable, "-m", "pytest", TEST_FILE, "-p", "no:cacheprovider", "-q", "-rA"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={test_timeout:g}")
    started = time.monotonic()
    log_path = os.path.join(folder, "pytest.log")
    with open(log_path, "w+") as log:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=run_timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        leftovers = end_processes(proc.pid, mark)
        log.seek(0)
        output = log.read()
    run = parse(output, folder)
    run.seconds = time.monotonic() - started
    notes = []
    if timed_out:
        notes.append(f"timed out after {run_timeout:g} s")
    if leftovers:
        notes.append(f"killed {leftovers} leftover process(es)")
    if not run.outcomes and not run.collection_error:
        tail = [line for line in output.splitlines() if line.strip()][-1:] or ["no output"]
        notes.append(f"no test results (pytest exit {proc.returncode}): {_shorten(tail[0], folder)}")
    run.note = "; ".join(notes)
    return run


def cell(run: Run, name: str) -> tuple[bool, str]:
    """(passed, table text) for one test in one variant."""
    if name in run.outcomes:
        passed, why = run.outcomes[name]
        return passed, "pass" if passed else f"FAIL: {why}"
    if run.collection_error:
        return False, f"FAIL (not collected): {run.collection_error}"
    return False, "FAIL: no result" + (f" ({run.note})" if run.note else "")


def table(names: list[str], runs: dict[str, Run]) -> str:
    """The Markdown table: a row per test, a column per variant, totals."""
    lines = ["| test | " + " | ".join(VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    totals = dict.fromkeys(VARIANTS, 0)
    for name in names:
        row = []
        for variant in VARIANTS:
            passed, text = cell(runs[variant], name)
            totals[variant] += passed
            row.append(text)
        lines.append(f"| `{name}` | " + " | ".join(row) + " |")
    lines.append("| **passed** | " + " | ".join(f"**{totals[v]} of {len(names)}**" for v in VARIANTS) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def prepare_keep(folder: str) -> str:
    """The --keep folder, made (or re-used if this script made it), its variant subfolders cleared."""
    folder = os.path.abspath(folder)
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.exists(os.path.join(folder, KEEP_MARK)):
        raise HarnessError(f"--keep {folder}: not empty and not made by this script; give a new folder")
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, KEEP_MARK), "w").close()
    for variant in VARIANTS:
        shutil.rmtree(os.path.join(folder, variant), ignore_errors=True)
    return folder


def measure(source_path: str, work: str, test_timeout: float, run_timeout: float) -> int:
    """Build the variants under work, run them, print the report."""
    with open(source_path, encoding="utf-8") as f:
        source = f.read()
    names = test_names(source)
    strict, port_notes = make_strict(source)
    standins = make_standins(strict)
    texts = {"strict": strict, "stand-ins": standins, "adapted": make_adapted(standins)}
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(20 * 1024 - 8)
    for variant, text in texts.items():
        folder = os.path.join(work, variant)
        os.makedirs(folder)
        write_fixtures(folder, image)
        with open(os.path.join(folder, TEST_FILE), "w", encoding="utf-8") as f:
            f.write(text)
    env = base_env(ensure_loguru(work))
    where = _python("import agentmesh; print(agentmesh.__file__, agentmesh.__version__)", env)
    if where.returncode != 0:
        raise HarnessError(f"agentmesh does not import: {where.stderr.strip()[-500:]}")
    runs: dict[str, Run] = {}
    for variant in VARIANTS:
        print(f"running {variant} ...", file=sys.stderr, flush=True)
        runs[variant] = run_variant(os.path.join(work, variant), env, test_timeout, run_timeout)
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    print(f"AgentScope's {os.path.basename(source_path)} ({len(names)} tests, sha256 {digest}…) "
          f"against agentmesh ({where.stdout.strip()}), {sys.executable}")
    print(f"fixed ports replaced: {', '.join(port_notes)}")
    print()
    print(table(names, runs))
    print()
    for variant in VARIANTS:
        run = runs[variant]
        print(f"- {variant}: {run.seconds:.0f} s" + (f"; {run.note}" if run.note else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="AgentScope's tests/rpc_agent_test.py (git tag v0.1.6)")
    parser.add_argument("--keep", metavar="DIR",
                        help="build and run in DIR and keep it (variants, fixtures, pytest.log each)")
    parser.add_argument("--test-timeout", type=float, default=120, help="seconds per test (pytest-timeout)")
    parser.add_argument("--run-timeout", type=float, default=900, help="seconds per variant's pytest run")
    args = parser.parse_args(argv)
    try:
        if args.keep:
            work = prepare_keep(args.keep)
            status = measure(args.source, work, args.test_timeout, args.run_timeout)
            print(f"\nvariants and logs kept in {work}")
            return status
        with tempfile.TemporaryDirectory(prefix="agentscope-suite-") as work:
            return measure(args.source, work, args.test_timeout, args.run_timeout)
    except (HarnessError, OSError, subprocess.SubprocessError) as exc:
        print(f"agentscope_suite: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
