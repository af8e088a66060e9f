"""The benchmark harness with tiny sizes, agentmesh only, so it cannot rot.

The full run (every peer, real sizes) is not part of the suite: `python benchmarks/run.py`.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import run as bench_run  # noqa: E402  (benchmarks/run.py)

#: every workload of the issue, as the table names it
REQUIRED_ROWS = [
    "tutorial: child-mode initialisation",
    "tutorial: child-mode runtime",
    "tutorial: independent initialisation",
    "tutorial: independent runtime",
    "sync no-op call round trip",
    "sync no-op calls/s",
    "pipelined async no-op calls/s",
    "n:n calls/s (4 callers × 8 agents, 2 servers)",
    "agent creation on running servers",
    "100 KB payload round trip",
    "1 MB payload round trip",
    "10 MB payload round trip",
    "memory per idle agent (server RSS)",
    "registry-resolved to_dist(), per agent",
    "SIGKILL of a server -> its registry key gone",
    "etcd restarted empty -> every server registered again",
    "failover after SIGKILL: next call returns",
    "no-op round trip, checkpoints on (default)",
    "no-op round trip, checkpoint=False",
    "checkpoint cost per call (median on - off)",
]

NUMBER = re.compile(r"^-?[\d,]*\.?\d+$")


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| workload "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_quick_run_reports_every_workload_for_agentmesh(tmp_path):
    out = tmp_path / "RESULTS.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--only",
                           "agentmesh", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    rows = table_rows(text)
    names = [r.name for r in bench_run.ROWS]
    assert set(REQUIRED_ROWS) <= set(names)
    for name in names:
        assert name in rows, f"row {name!r} missing from the table:\n{text}"
        median = rows[name][2]           # workload | unit | agentmesh median | ...
        assert NUMBER.match(median), f"{name}: agentmesh median is {median!r}, not a number"
    assert "## Targets" in text and "## Machine" in text
    # peers were not run, and the table says so rather than dropping them
    assert "not run (--only agentmesh)" in rows["sync no-op calls/s"][4]
