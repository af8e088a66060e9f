"""How benchmarks/agentscope_suite.py turns AgentScope's test file into its three variants, and its fixtures.

Text transformations only, each anchored: a missing or doubled anchor is a
HarnessError naming it. Nothing of AgentScope's is kept here but the short
anchor strings the changes need.
"""
from __future__ import annotations

import ast
import os
import re

class HarnessError(Exception):
    """The harness cannot do what it must (an anchor is missing, pip fails, ...): exit status 2."""


# ---------------------------------------------------------------- text transformations

def _replace_once(text: str, old: str, new: str, what: str) -> str:
    """text with old (which must occur exactly once) replaced by new."""
    count = text.count(old)
    if count != 1:
        raise HarnessError(f"{what}: expected {old!r} exactly once in the file, found it {count} time(s)")
    return text.replace(old, new, 1)


def _rename(text: str, old: str, new: str) -> str:
    """Every occurrence of old replaced by new; at least one must exist."""
    if old not in text:
        raise HarnessError(f"rename {old} -> {new}: {old!r} does not occur in the file")
    return text.replace(old, new)


def _function_span(text: str, name: str) -> tuple[int, int]:
    """Character offsets [start, end) of the one function or method called name (decorators excluded)."""
    nodes = [n for n in ast.walk(ast.parse(text))
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
    if len(nodes) != 1:
        raise HarnessError(f"expected one function {name!r} in the file, found {len(nodes)}")
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    node = nodes[0]
    return starts[node.lineno - 1], starts[node.end_lineno]


def _in_function(text: str, anchor: str, name: str) -> int:
    """Offset of anchor, which must occur exactly once in the file, and inside function name."""
    count = text.count(anchor)
    if count != 1:
        raise HarnessError(f"expected {anchor!r} exactly once in the file, found it {count} time(s)")
    at = text.index(anchor)
    start, end = _function_span(text, name)
    if not start <= at < end:
        raise HarnessError(f"{anchor!r} is not inside {name}()")
    return at


def _enclosing_function(tree: ast.AST, lineno: int) -> str:
    """Name of the innermost function containing line lineno, '<module>' if none."""
    best, best_start = "<module>", -1
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.lineno <= lineno <= (node.end_lineno or node.lineno) and node.lineno > best_start:
                best, best_start = node.name, node.lineno
    return best


PORT_HELPER = '''import socket as _harness_socket

_HARNESS_PORTS = {}


def _harness_port(scope, literal):
    """[harness] A free port in place of the fixed port `literal` (the same one within `scope`)."""
    if (scope, literal) not in _HARNESS_PORTS:
        while True:
            with _harness_socket.socket(_harness_socket.AF_INET, _harness_socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _HARNESS_PORTS.values():
                break
        _HARNESS_PORTS[(scope, literal)] = port
    return _HARNESS_PORTS[(scope, literal)]


'''

PORT_KEYWORD = re.compile(r"\bport=(\d+)\b")


def make_strict(source: str) -> tuple[str, list[str]]:
    """The strict variant, and a note per replaced port literal ('test: 12010')."""
    text = _rename(source, "agentscope", "agentmesh")
    text = _rename(text, "RetryExpential", "RetryExponential")
    text = _rename(text, "sequentialpipeline", "sequential_pipeline")
    tree = ast.parse(text)
    line_starts = [m.start() for m in re.finditer(r"^", text, re.M)]
    notes: list[str] = []
    pieces: list[str] = []
    last = 0
    for match in PORT_KEYWORD.finditer(text):
        literal = int(match.group(1))
        if literal < 1024:
            continue
        lineno = sum(1 for s in line_starts if s <= match.start())
        scope = _enclosing_function(tree, lineno)
        pieces += [text[last:match.start()], f"port=_harness_port({scope!r}, {literal})"]
        last = match.end()
        notes.append(f"{scope}: {literal}")
    pieces.append(text[last:])
    if not notes:
        raise HarnessError("no fixed port (port=NNNN, NNNN >= 1024) found in the file")
    text = "".join(pieces)
    left = [m.group(0) for m in PORT_KEYWORD.finditer(text) if int(m.group(1)) >= 1024]
    if left:
        raise HarnessError(f"fixed ports left after replacing: {left}")
    text = _insert_before_import(text, PORT_HELPER, "port helper")
    return text, notes


def _insert_before_import(text: str, code: str, what: str) -> str:
    """code inserted before the file's one top-level 'import agentmesh' line."""
    found = list(re.finditer(r"^import agentmesh\n", text, re.M))
    if len(found) != 1:
        raise HarnessError(f"{what}: expected one line 'import agentmesh', found {len(found)}")
    at = found[0].start()
    return text[:at] + code + text[at:]


STANDIN_HELPER = '''import importlib as _harness_importlib


class _HarnessStandIn:
    """[harness] Stand-in for a name agentmesh does not have: using it raises ImportError naming it."""

    def __init__(self, qualname, why):
        self._qualname, self._why = qualname, why

    def _fail(self, *args, **kwargs):
        raise ImportError(f"[harness stand-in] {self._qualname} is not in agentmesh ({self._why})")

    __call__ = _fail

    def __getattr__(self, item):
        if item.startswith("_"):
            raise AttributeError(item)
        self._fail()


def _harness_name(module, name, exception=False):
    """[harness] module.name if agentmesh has it, else a stand-in (an exception class if `exception`)."""
    try:
        found = _harness_importlib.import_module(module)
    except ImportError as exc:
        why = f"{type(exc).__name__}: {exc}"
    else:
        if hasattr(found, name):
            return getattr(found, name)
        why = f"module {module} has no attribute {name}"
    qualname = f"{module}.{name}"
    if not exception:
        return _HarnessStandIn(qualname, why)

    def _raise(self, *args, **kwargs):
        raise ImportError(f"[harness stand-in] {qualname} is not in agentmesh ({why})")

    return type(name, (Exception,), {"__init__": _raise, "__doc__": "[harness] stand-in: never raised"})


'''


def make_standins(strict: str) -> str:
    """The stand-ins variant: strict plus stand-ins for the names outside distributed mode."""
    text = _insert_before_import(strict, STANDIN_HELPER, "stand-in helper")
    text = _replace_once(
        text, "from agentmesh.agents import AgentBase, DialogAgent\n",
        "from agentmesh.agents import AgentBase\n"
        'DialogAgent = _harness_name("agentmesh.agents", "DialogAgent")\n', "DialogAgent stand-in")
    text = _replace_once(
        text, "from agentmesh.manager import MonitorManager, ASManager\n",
        'MonitorManager = _harness_name("agentmesh.manager", "MonitorManager")\n'
        'ASManager = _harness_name("agentmesh.manager", "ASManager")\n'
        'QuotaExceededError = _harness_name("agentmesh.exception", "QuotaExceededError", exception=True)\n',
        "agentmesh.manager stand-ins")
    text = _replace_once(text, "    QuotaExceededError,\n", "", "QuotaExceededError import")
    flush = "        ASManager.get_instance().flush()\n"
    at = _in_function(text, flush, "tearDown")
    text = (text[:at]
            + "        try:  # [harness] non-fatal: ASManager is a stand-in\n"
            + "    " + flush
            + "        except ImportError as _harness_exc:\n"
            + '            print(f"[harness] tearDown: {_harness_exc}")\n'
            + text[at + len(flush):])
    return text


def make_adapted(standins: str) -> str:
    """The adapted variant: stand-ins plus the three documented deliberate differences."""
    test = "test_agent_server_management_funcs"
    launcher_end = "            custom_agent_classes=[DemoRpcAgentWithMemory, FileAgent],\n        )\n"
    at = _in_function(standins, launcher_end, test) + launcher_end.index("        )\n")
    text = (standins[:at]
            + '            file_dir=os.path.join(os.path.abspath(os.path.dirname(__file__)), "data"),'
            + "  # [harness] adapted\n"
            + standins[at:])
    begin = _in_function(text, "        # test existing model config\n", test)
    end = _in_function(text, "        self.assertTrue(client.delete_all_agent())\n", test)
    if not begin < end:
        raise HarnessError("the model-config part does not come before delete_all_agent()")
    text = text[:begin] + "        # [harness] adapted: DialogAgent/model-config part dropped\n" + text[end:]
    sync = "    def custom_sync_func(self) -> int:\n"
    at = _in_function(text, sync, "custom_sync_func")
    text = text[:at] + "    @agentmesh.rpc.sync_func(interleave=True)  # [harness] adapted\n" + text[at:]
    return text


def test_names(source: str) -> list[str]:
    """The test methods of the file's TestCase classes, in file order."""
    names: list[str] = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            names += [f.name for f in node.body
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name.startswith("test")]
    if not names:
        raise HarnessError("no test methods found in the file")
    return names


# ---------------------------------------------------------------- fixtures and environment

CUSTOM_AGENT = '''"""A custom agent for agent_dir (written by benchmarks/agentscope_suite.py)."""
from agentmesh.agents import AgentBase
from agentmesh.message import Msg


class CustomAgent(AgentBase):
    """Answers every message with 'Hello world'."""

    def reply(self, x: Msg = None) -> Msg:
        return Msg(name=self.name, content="Hello world", role="assistant")
'''

MODEL_CONFIG = '''[
    {"config_name": "qwen", "model_type": "dashscope_chat", "model_name": "qwen-max", "api_key": "unused"}
]
'''


def write_fixtures(folder: str, image: bytes) -> None:
    """data/image.png, custom/test_model_config.json, custom/custom_agent.py and an empty pytest.ini in folder."""
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    os.makedirs(os.path.join(folder, "custom"), exist_ok=True)
    with open(os.path.join(folder, "data", "image.png"), "wb") as f:
        f.write(image)
    with open(os.path.join(folder, "custom", "test_model_config.json"), "w") as f:
        f.write(MODEL_CONFIG)
    with open(os.path.join(folder, "custom", "custom_agent.py"), "w") as f:
        f.write(CUSTOM_AGENT)
    with open(os.path.join(folder, "pytest.ini"), "w") as f:   # the rootdir: no outside config applies
        f.write("[pytest]\n")
