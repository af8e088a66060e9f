"""Rooms meet at public seams: no module of one room uses a private name of another.

A *room* is a top-level entry of the agentmesh package: a subpackage with all
it holds (``agentmesh/rpc``, ``agentmesh/server``, ``agentmesh/_client``,
``agentmesh/discovery``, ``agentmesh/agents``, ``agentmesh/cli``,
``agentmesh/etcd``, ``agentmesh/testing`` ...) or a top-level module, each its
own room (``agentmesh/_placeholder.py``, ``agentmesh/msghub.py``, ``agentmesh/_runtime.py``
..., and ``agentmesh/__init__.py``). Generated code (``v1``, ``etcdv3``) is not
read. A top-level module's own leading underscore (``_placeholder``) names a room,
not a private name: any room may import ``agentmesh._placeholder``.

A room's *private names* are the names with one leading underscore (dunders
are not private) of: its modules and subpackages below the room
(``discovery/_view``), what its modules define at module level, and what its
classes define (methods, class attributes, ``self._x =`` assignments,
``__slots__``). Inside its own room a private name may be used freely.

The check (ast, function bodies included) fails listing each of these in a room:

* ``from X import _name`` and ``from X._mod import name`` / ``import X._mod``
  where X is in another room;
* ``obj._name``, and ``getattr``/``setattr``/``hasattr``/``delattr``/
  ``object.__setattr__`` with the string ``"_name"``, where ``_name`` is a
  private name of another room and of no class or module of this room, and
  ``obj`` is not ``self`` or ``cls``. Which object ``obj`` is cannot be known
  without running the code, so this is a heuristic: a name private to both
  rooms is not flagged.
"""
from __future__ import annotations

import ast
import os
import shutil

from conftest import ROOT

GENERATED = {"v1", "etcdv3"}
ACCESSORS = {"getattr", "setattr", "hasattr", "delattr", "__setattr__", "__getattribute__", "__delattr__"}


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def modules(package: str) -> dict[str, str]:
    """Dotted module name -> path, for the package's hand-written modules."""
    found = {}
    parent = os.path.dirname(package)
    for folder, subfolders, files in os.walk(package):
        subfolders[:] = [d for d in subfolders if d != "__pycache__" and
                         not (folder == package and d in GENERATED)]
        for name in files:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name), parent)[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return found


def room(module: str) -> str:
    """agentmesh.rpc._proxy -> agentmesh.rpc; agentmesh._placeholder -> agentmesh._placeholder; agentmesh -> itself."""
    return ".".join(module.split(".")[:2])


def private_parts(module: str) -> list[str]:
    """The private components of a module's name below its room: agentmesh.discovery._view -> [_view]."""
    return [p for p in module.split(".")[2:] if private(p)]


def defined_names(tree: ast.Module) -> set[str]:
    """Private names a module defines: at module level, and in its classes."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                      for t in node.targets):
                names.update(c.value for c in ast.walk(node.value)
                             if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return {n for n in names if private(n)}


def imported(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name of what a from-import imports from."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def crossings(package: str) -> list[str]:
    """Every use of another room's private name in the package, as "path:line: what"."""
    mods = modules(package)
    trees = {m: ast.parse(open(p).read(), filename=p) for m, p in mods.items()}
    owners: dict[str, set[str]] = {}        # private name -> the rooms it is private to
    for m, tree in trees.items():
        for name in defined_names(tree) | set(private_parts(m)):
            owners.setdefault(name, set()).add(room(m))
    found = []
    for m, tree in trees.items():
        here, where = room(m), os.path.relpath(mods[m], os.path.dirname(package))

        def foreign(name: str) -> bool:
            return private(name) and here not in owners.get(name, ()) and bool(owners.get(name))

        for node in ast.walk(tree):
            line = f"{where}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom):
                source = imported(m, mods[m].endswith("__init__.py"), node)
                for alias in node.names:
                    target = f"{source}.{alias.name}"
                    if source.split(".")[0] != "agentmesh" or room(target if source == "agentmesh" else source) == here:
                        continue
                    if source == "agentmesh" and target in mods:    # a room itself: agentmesh._placeholder
                        continue
                    bad = private_parts(source) + ([alias.name] if private(alias.name) else [])
                    if bad:
                        found.append(f"{line}: from {source} import {alias.name} ({', '.join(bad)})")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "agentmesh" and room(alias.name) != here \
                            and private_parts(alias.name):
                        found.append(f"{line}: import {alias.name}")
            elif isinstance(node, ast.Attribute) and foreign(node.attr):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    found.append(f"{line}: .{node.attr} (private to {', '.join(sorted(owners[node.attr]))})")
            elif isinstance(node, ast.Call) and len(node.args) >= 2:
                func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                obj, name = node.args[0], node.args[1]
                if (func in ACCESSORS and isinstance(name, ast.Constant) and isinstance(name.value, str)
                        and foreign(name.value) and not (isinstance(obj, ast.Name) and obj.id in ("self", "cls"))):
                    found.append(f"{line}: {func}(..., {name.value!r}) (private to "
                                 f"{', '.join(sorted(owners[name.value]))})")
    return sorted(found, key=lambda f: (f.split(":")[0], int(f.split(":")[1])))


def test_no_room_uses_a_private_name_of_another():
    assert crossings(os.path.join(ROOT, "agentmesh")) == []


def test_private_names_reached_across_rooms_are_found(tmp_path):
    """A copy of the package with the kinds of crossing the seams replaced: each is listed; self._x is not."""
    package = tmp_path / "agentmesh"
    shutil.copytree(os.path.join(ROOT, "agentmesh"), package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(package / "msghub.py", "a") as f:
        f.write("\n\ndef _sneaky(agent, placeholder, slot, proxy):\n"
                "    from .discovery._view import ServerView  # noqa: F401\n"
                "    from .server import _classes  # noqa: F401\n"
                "    from ._placeholder import _rebuild  # noqa: F401\n"
                "    import agentmesh.rpc._proxy  # noqa: F401\n"
                "    agent._call('observe', (), {}, True)\n"
                "    getattr(placeholder, '_resolve_async')\n"
                "    return slot._slot, proxy._local_audience\n")
    with open(package / "_codec.py", "a") as f:
        f.write("\n\nclass _Mine:\n    def f(self):\n        return self._local_audience, self._call()\n")
    found = crossings(str(package))
    assert {line.split(": ", 1)[1].split(" (")[0] for line in found} == {
        "from agentmesh.discovery._view import ServerView",
        "from agentmesh.server import _classes",
        "from agentmesh._placeholder import _rebuild",
        "import agentmesh.rpc._proxy",
        "._call",
        "getattr(..., '_resolve_async')",
        "._slot",
        "._local_audience",
    }, found
    assert all(line.startswith("agentmesh/msghub.py:") for line in found), found
