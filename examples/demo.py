"""The README's demo: the tutorial's web-search agents, placed through an etcd registry.

Brings up the development registry (``agentmesh registry up``'s: etcd with
auth on, its root password and a namespace token in 0600 files) and three
agent servers that register in it, creates the tutorial's five WebAgents with
plain ``to_dist()`` (no host: the registry picks the server with the most
room), runs them in parallel, prints ``agentmesh servers`` and ``agentmesh
agents``, then stops everything it started, also on Ctrl-C or failure.
Servers, CLI and this process find registry, password and token through the
``AGENTMESH_*`` variables the registry prints: no secret is in any argv.
"""
from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "distribution"))

import agentmesh  # noqa: E402
from agentmesh.testing import start_dev_registry  # noqa: E402

import dist_main  # noqa: E402  (the tutorial's code, unchanged but for the package name)


def start_server(capacity: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "agentmesh.cli", "server", "--capacity", str(capacity)],
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
    with start_dev_registry(name="agentmesh-demo") as registry:
        print(f"etcd up at {registry.url} with auth on; the servers and this process use:\n"
              f"{registry.exports()}", flush=True)
        os.environ.update(registry.environment())
        try:
            for capacity in (2, 2, 4):
                proc, address = start_server(capacity)
                servers.append(proc)
                print(f"agent server on {address}, capacity {capacity}, registered", flush=True)
            agentmesh.init()
            start = time.time()
            agents = dist_main.init_with_dist()
            print(f"\nInitialization time (registry placement): {time.time() - start:.3f}", flush=True)
            for agent in agents:
                print(f"  {agent.name} -> {agent.server}")
            print(f"Runtime with distributed mode: {dist_main.run(agents):.3f}", flush=True)
            time.sleep(1.0)  # registry load updates are at most 0.2 s behind; give the table a moment
            cli("servers")
            cli("agents")
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
