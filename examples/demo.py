"""The README's demo: the tutorial's web-search agents, placed through an etcd registry.

Brings up a local etcd and three agent servers that register in it, creates
the tutorial's five WebAgents with plain ``to_dist()`` (no host: the registry
picks the server with the most room), runs them in parallel, prints
``agentmesh servers`` and ``agentmesh agents``, then stops everything it
started, also on Ctrl-C or failure.
"""
from __future__ import annotations

import os
import pathlib
import re
import secrets
import signal
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "distribution"))

import agentmesh  # noqa: E402
from agentmesh.testing import EtcdProcess  # noqa: E402

import dist_main  # noqa: E402  (the tutorial's code, unchanged but for the package name)


def start_server(url: str, capacity: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentmesh.cli", "server", "--registry", url, "--capacity", str(capacity)],
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"listening on (\S+)", line)
        if found:
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"agent server did not start (exit code {proc.poll()})")


def cli(*args: str) -> None:
    print(f"\n$ agentmesh {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "agentmesh.cli", *args], check=True, timeout=60)


def main() -> None:
    servers: list[subprocess.Popen] = []
    # The namespace token: servers sign their registry records with it and prove they hold it. It goes to
    # the servers through the environment, never argv.
    os.environ.setdefault("AGENTMESH_TOKEN", secrets.token_urlsafe(32))
    with EtcdProcess(name="agentmesh-demo") as etcd:
        print(f"etcd up at {etcd.url}", flush=True)
        try:
            for capacity in (2, 2, 4):
                proc, address = start_server(etcd.url, capacity)
                servers.append(proc)
                print(f"agent server on {address}, capacity {capacity}, registered", flush=True)
            os.environ["AGENTMESH_REGISTRY"] = etcd.url
            agentmesh.init()
            start = time.time()
            agents = dist_main.init_with_dist()
            print(f"\nInitialization time (registry placement): {time.time() - start:.3f}", flush=True)
            for agent in agents:
                print(f"  {agent.name} -> {agent.server}")
            print(f"Runtime with distributed mode: {dist_main.run(agents):.3f}", flush=True)
            time.sleep(1.0)  # registry load updates are at most 0.2 s behind; give the table a moment
            cli("servers", "--registry", etcd.url)
            cli("agents", "--registry", etcd.url)
            agentmesh.shutdown()   # release our agents before the servers stop (else they would move)
        finally:
            for proc in servers:
                proc.send_signal(signal.SIGTERM)
            for proc in servers:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    print("\nservers drained and exited, etcd stopped", flush=True)


if __name__ == "__main__":
    main()
