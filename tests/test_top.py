"""`agentmesh top` (issue 13): read as a person would, under tmux, and as a script would, with --once --json."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid

from agentmesh import Msg
from conftest import MESH_TOKEN, PYTHON, ROOT, wait_until
from sample_agents import Echo


def _busy(proxy, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():     # each reply read: calls sent without waiting pile up by the thousand
            proxy.reply(Msg("u", "x")).result()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _env() -> dict[str, str]:
    return dict(os.environ, AGENTMESH_TOKEN=MESH_TOKEN, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))


def test_top_once_json_gives_each_servers_load(mesh, namespace, servers):
    busy = servers(capacity=10, registry=mesh.url, namespace=namespace, metrics_port=0)
    idle = servers(capacity=5, registry=mesh.url, namespace=namespace, metrics_port=0)
    agent = Echo("busy").to_dist(host="127.0.0.1", port=busy.port)
    stop = threading.Event()
    thread = _busy(agent, stop)
    try:
        out = subprocess.run([PYTHON, "-m", "agentmesh.cli", "top", "--once", "--json", "--interval", "1",
                              "--registry", mesh.url, "--namespace", namespace], capture_output=True, text=True,
                             timeout=60, env=_env(), cwd=ROOT)
    finally:
        stop.set()
        thread.join(10)
    assert out.returncode == 0, out.stderr
    rows = {r["server_id"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {busy.server_id, idle.server_id}
    assert rows[busy.server_id]["calls_per_s"] > 10 and rows[busy.server_id]["p50_s"] is not None
    assert rows[busy.server_id]["agents"] == 1 and rows[busy.server_id]["capacity"] == 10
    assert rows[idle.server_id]["calls_per_s"] == 0 and rows[idle.server_id]["capacity"] == 5


def test_top_under_tmux_shows_the_servers_and_their_calls(mesh, namespace, servers):
    busy = servers(capacity=10, registry=mesh.url, namespace=namespace, metrics_port=0)
    idle = servers(capacity=5, registry=mesh.url, namespace=namespace, metrics_port=0)
    agent = Echo("watched").to_dist(host="127.0.0.1", port=busy.port)
    sock, session = f"agentmesh-test-{uuid.uuid4().hex[:8]}", "top"
    tmux = ["tmux", "-L", sock]
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "180", "-y", "30",
                    f"{PYTHON} -m agentmesh.cli top --registry {mesh.url} --namespace {namespace}"],
                   check=True, env=_env(), cwd=ROOT)
    pane_pid = int(subprocess.run([*tmux, "list-panes", "-t", session, "-F", "#{pane_pid}"], capture_output=True,
                                  text=True, check=True).stdout.split()[0])
    stop = threading.Event()
    thread = _busy(agent, stop)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    def busy_row_calls() -> float:
        for line in screen().splitlines():
            if busy.server_id in line:
                cells = [c.strip() for c in line.replace("|", "│").split("│") if c.strip()]
                try:
                    return float(cells[4])
                except (IndexError, ValueError):
                    return 0.0
        return 0.0

    try:
        wait_until(lambda: busy.server_id in screen() and idle.server_id in screen(), timeout=30)
        text = screen()
        assert "CALLS/S" in text and "P99" in text and "INFLIGHT" in text and namespace in text
        assert "1/10" in text and "0/5" in text                     # agents / capacity of each server
        wait_until(lambda: busy_row_calls() > 10, timeout=20)      # the busy server's calls/s, live
    finally:
        stop.set()
        thread.join(10)
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        try:
            os.kill(pane_pid, 9)
        except ProcessLookupError:
            pass
