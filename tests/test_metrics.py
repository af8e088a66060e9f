"""Prometheus metrics (issue 13): a real Prometheus finds servers through the registry and scrapes them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentmesh import Msg, errors
from agentmesh.relocation import Relocation
from conftest import MESH_TOKEN, PYTHON, wait_until
from prometheus_helpers import Prometheus, wait_ready
from sample_agents import Echo


def _targets(path) -> dict[str, list[str]]:
    if not os.path.exists(path):
        return {}
    return {t["labels"]["server_id"]: t["targets"] for t in json.loads(open(path).read())}


def test_prometheus_finds_the_servers_through_the_registry_and_counts_their_calls(mesh, namespace, servers, procs,
                                                                                   tmp_path):
    a = servers(capacity=10, registry=mesh.url, namespace=namespace, metrics_port=0)
    b = servers(capacity=10, registry=mesh.url, namespace=namespace, metrics_port=0)
    target_file = str(tmp_path / "targets.json")
    procs([PYTHON, "-m", "agentmesh.cli", "prometheus-targets", "--watch", "--interval", "0.2", "--registry",
           mesh.url, "--namespace", namespace, "--output", target_file], env={"AGENTMESH_TOKEN": MESH_TOKEN},
          stderr=subprocess.DEVNULL)
    wait_until(lambda: len(_targets(target_file)) == 2, timeout=20)
    assert _targets(target_file) == {a.server_id: [f"127.0.0.1:{a.metrics_port}"],
                                     b.server_id: [f"127.0.0.1:{b.metrics_port}"]}
    prometheus = Prometheus(str(tmp_path), target_file)
    try:
        wait_ready(prometheus)
        on_a = Echo("on-a").to_dist(host="127.0.0.1", port=a.port)
        on_b = Echo("on-b").to_dist(host="127.0.0.1", port=b.port)
        for _ in range(7):
            on_a.reply(Msg("u", "x"))
        for _ in range(3):
            on_b.reply(Msg("u", "y"))
        with pytest.raises(errors.UnknownMethodError):
            on_b.no_such_method()

        def calls(expr: str) -> dict[str, float]:
            return {r["metric"].get("server_id", ""): float(r["value"][1]) for r in prometheus.query(expr)}

        wait_until(lambda: calls('sum by (server_id) (agentmesh_calls_total{method="reply",status="OK"})')
                   == {a.server_id: 7.0, b.server_id: 3.0}, timeout=30)
        series = prometheus.query('agentmesh_calls_total{method="reply"}')
        assert {(s["metric"]["class"], s["metric"]["status"], s["metric"]["job"]) for s in series} == {
            ("sample_agents:Echo", "OK", "agentmesh")}
        wait_until(lambda: calls('sum by (server_id) (agentmesh_calls_total{status="UNKNOWN_METHOD"})')
                   == {b.server_id: 1.0}, timeout=10)
        refused = prometheus.query('agentmesh_calls_total{status="UNKNOWN_METHOD"}')
        assert [s["metric"]["method"] for s in refused] == ["other"]   # a method the class lacks is no label
        assert calls('sum by (server_id) (agentmesh_call_duration_seconds_count{side="server",method="reply"})') \
            == {a.server_id: 7.0, b.server_id: 3.0}
        assert calls('sum by (server_id) (agentmesh_call_duration_seconds_bucket{side="server",le="+Inf",'
                     'method="reply"})') == {a.server_id: 7.0, b.server_id: 3.0}
        assert calls('sum by (server_id) (agentmesh_agents{class="sample_agents:Echo"})') == {
            a.server_id: 1.0, b.server_id: 1.0}
        assert calls("agentmesh_capacity") == {a.server_id: 10.0, b.server_id: 10.0}
        assert calls('agentmesh_lease_renewals_total{result="ok"}').keys() == {a.server_id, b.server_id}
        every = prometheus.query('{job="agentmesh",__name__=~"agentmesh_.*"}')
        values = {v for s in every for v in s["metric"].values()}
        assert on_a.agent_id not in values and on_b.agent_id not in values   # no label carries an agent id
        _dashboard_queries_run(prometheus, namespace)
        c = servers(capacity=10, registry=mesh.url, namespace=namespace, metrics_port=0)   # a server that comes
        wait_until(lambda: c.server_id in calls("agentmesh_capacity"), timeout=30)       # later is scraped too
        os.kill(c.pid, signal.SIGKILL)                                                   # and one that goes,
        wait_until(lambda: c.server_id not in _targets(target_file), timeout=20)         # leaves the file
    finally:
        prometheus.stop()


def _dashboard_queries_run(prometheus: Prometheus, namespace: str) -> None:
    """Every query of the Grafana dashboard parses and, for the call panels, finds the calls just made."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "grafana", "agentmesh.json")) as f:
        dashboard = json.load(f)
    found = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$namespace", namespace)
            answer = prometheus.get("/api/v1/query", query=expr)
            assert answer["status"] == "success", (panel["title"], expr, answer)
            found[panel["title"]] = answer["data"]["result"]
    assert found["Agents hosted vs capacity"] and found["Servers up"]
    assert found["Servers up"][0]["value"][1] == "2"


def _scrape(port: int) -> list:
    """Every sample the endpoint serves."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_client_counts_its_calls_placements_and_the_failover_of_its_agent(mesh, namespace, servers, runtime):
    started = [servers(capacity=10, registry=mesh.url, namespace=namespace, metrics_port=0) for _ in range(2)]
    port = runtime.serve_metrics(0, "127.0.0.1")
    try:
        agent = Echo("moving").to_dist()
        assert agent.reply(Msg("u", "one")).content["count"] == 1
        before = agent.server
        os.kill(server_pid(runtime, before), signal.SIGKILL)
        assert agent.reply(Msg("u", "two")).content["count"] == 2   # moved, with its state
        assert agent.server != before
        samples = wait_until(lambda: (lambda f: f if _value(f, "agentmesh_failovers_total") else None)(
            _scrape(port)), timeout=10)
        assert _value(samples, "agentmesh_placements_total", result="registry") == 1
        assert _value(samples, "agentmesh_agent_moves_total", reason="lost") == 1
        assert _value(samples, "agentmesh_failovers_total", reason="lost") == 1
        assert _value(samples, "agentmesh_client_calls_total", method="reply", status="OK",
                      **{"class": "sample_agents:Echo"}) == 2
        assert _value(samples, "agentmesh_call_duration_seconds_count", side="client", method="reply") == 2
        assert _value(samples, "agentmesh_owned_agents") == len(Relocation.of(runtime).owned) >= 1
        survivor = next(s for s in started if agent.server.endswith(f":{s.port}"))   # the agent moved in there
        assert _value(_scrape(survivor.metrics_port), "agentmesh_agents_restored_total") == 1
    finally:
        runtime.stop_metrics()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def server_pid(runtime, address: str) -> int:
    """The PID of the server process at address, from its GetInfo."""
    from agentmesh.rpc import RpcClient

    host, port = address.rsplit(":", 1)
    return RpcClient(host, int(port), runtime=runtime).get_server_info()["pid"]
