"""The documentation site builds with warnings as errors, and the docs point at nothing outside the repository.

`mkdocs build --strict` fails on a page left out of the nav, a broken link or
anchor, and a docstring mkdocstrings cannot render, so this test keeps
docs/, mkdocs.yml and the public docstrings in step.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: headings the API page must have: one per public name, as mkdocstrings anchors them
API_NAMES = [
    "agentmesh.init",
    "agentmesh.shutdown",
    "agentmesh.AgentBase",
    "agentmesh.Msg",
    "agentmesh.RpcObject",
    "agentmesh.AsyncResult",
    "agentmesh.RpcAgentServerLauncher",
    "agentmesh.rpc.RpcClient",
    "agentmesh.msghub.msghub",
    "agentmesh.pipelines.sequential_pipeline",
    "agentmesh.errors.AgentCallError",
    "agentmesh.errors.AgentCreationError",
]

#: what users never get: a file outside the repository
OUTSIDE = re.compile(r"SPEC\.md|shared project folder", re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_site_builds_strict_with_every_page(site: Path) -> None:
    pages = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.md"))
    assert pages, "no pages in docs/"
    for page in pages:
        built = site / ("index.html" if page.name == "index.md" else page.with_suffix("") / "index.html")
        assert built.is_file(), f"docs/{page} was not built ({built} missing)"


def test_api_page_documents_the_public_names(site: Path) -> None:
    html = (site / "api" / "index.html").read_text(encoding="utf-8")
    missing = [name for name in API_NAMES if f'id="{name}"' not in html]
    assert not missing, f"the API page has no entry for {missing}"


def _repo_texts() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "mkdocs.yml", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "agentmesh").rglob("*.py"))]
    return [f for f in files if f.is_file()]


def test_nothing_points_outside_the_repository() -> None:
    offenders = []
    for path in _repo_texts():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "files that point outside the repository:\n" + "\n".join(offenders)


def test_readme_links_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert any(t.startswith("docs/") for t in local), "the README links into docs/"
    broken = [t for t in local if not (ROOT / t).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
