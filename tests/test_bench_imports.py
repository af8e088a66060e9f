"""The benchmarks import one way: no circle among benchmarks/*.py, function-local imports included.

The benchmark scripts import each other as top-level modules (each puts its own
folder on sys.path), so `import X` / `from X import y` names a benchmark module
when benchmarks/X.py exists. Their shared set-up (server processes, the host,
the token) is benchmarks/_servers.py, which imports none of the workloads.
"""
from __future__ import annotations

import ast
import os

from conftest import ROOT

BENCHMARKS = os.path.join(ROOT, "benchmarks")


def import_graph(folder: str) -> dict[str, set[str]]:
    """module -> the modules of folder it imports, anywhere in its body."""
    modules = {name[:-3] for name in os.listdir(folder) if name.endswith(".py")}
    graph: dict[str, set[str]] = {}
    for module in sorted(modules):
        with open(os.path.join(folder, module + ".py")) as f:
            tree = ast.parse(f.read(), filename=module + ".py")
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        graph[module] = (found & modules) - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_benchmark_modules_import_each_other_in_a_circle():
    graph = import_graph(BENCHMARKS)
    assert "_servers" in graph and graph["_servers"] <= {"bench_agents"}, graph.get("_servers")
    assert not cycles(graph), {tuple(c): {m: sorted(graph[m] & set(c)) for m in c} for c in cycles(graph)}


def test_a_function_local_import_back_is_a_circle(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from c import x\n")
    (tmp_path / "c.py").write_text("import os\n\n\ndef g():\n    import a.sub as _\n")
    (tmp_path / "d.py").write_text("import a\n")
    assert cycles(import_graph(str(tmp_path))) == [["a", "b", "c"]]
