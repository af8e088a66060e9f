"""agentmesh alone, table on stdout: the old entry point, now a shortcut into the harness.

    python benchmarks/bench.py            # = python benchmarks/run.py --only agentmesh --out -
    python benchmarks/bench.py --quick    # tiny sizes

Its workloads (call path, registry placement, SIGKILL -> key gone, etcd
restart) live in workloads_agentmesh.py; benchmarks/run.py runs them next to
the peers (AgentScope, Ray) and writes benchmarks/RESULTS.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run.main(["--only", "agentmesh", "--out", "-", *sys.argv[1:]]))
