"""The package's structure: the import-linter contract in pyproject.toml holds, and it can break.

The contract states the layers (each imports only those below it) and that no
modules import each other in a circle, function-local imports included.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import ROOT

LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(package_parent: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=package_parent)
    return subprocess.run([LINT, "--config", os.path.join(ROOT, "pyproject.toml"), "--no-cache"],
                          capture_output=True, text=True, timeout=120, cwd=package_parent, env=env)


def test_the_layering_contract_is_kept():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


def test_an_upward_import_or_a_circle_breaks_it(tmp_path):
    """A copy of the package with one import added upward, hidden in a function, fails the check."""
    shutil.copytree(os.path.join(ROOT, "agentmesh"), tmp_path / "agentmesh",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "agentmesh" / "_codec.py", "a") as f:
        f.write("\n\ndef _sneaky():\n    from .rpc import _proxy  # noqa: F401\n")
    out = lint(str(tmp_path))
    assert out.returncode != 0
    assert "agentmesh._codec -> agentmesh.rpc._proxy" in out.stdout
    assert "BROKEN" in out.stdout


#: the package's modules leave room to grow; tests and benchmarks may run longer
MAX_LINES = {"agentmesh": 350, "tests": 400, "benchmarks": 400}


def test_no_hand_written_module_is_over_its_size():
    """The package (350 lines), the tests and the benchmarks (400); not generated code nor the peers' venvs."""
    skipped = {
        os.path.join(ROOT, "agentmesh", "v1"),            # generated code
        os.path.join(ROOT, "agentmesh", "etcdv3"),
        os.path.join(ROOT, "benchmarks", ".envs"),        # the peers' venvs
    }
    long = {}
    for top, limit in MAX_LINES.items():
        for folder, subfolders, files in os.walk(os.path.join(ROOT, top)):
            subfolders[:] = [d for d in subfolders if d != "__pycache__"
                             and os.path.join(folder, d) not in skipped]
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path) as f:
                        lines = sum(1 for _ in f)
                    if lines > limit:
                        long[os.path.relpath(path, ROOT)] = lines
    assert not long, long
