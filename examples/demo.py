"""The README's demo: the tutorial's web-search agents on agentmesh, child then independent mode.

Runs examples/distribution/dist_main.py as the tutorial does, then starts
dist_server.py (port 12345, as in the tutorial) and runs dist_main.py
against it. Stops everything it started, also on Ctrl-C or failure.
"""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent / "distribution"


def run_main(*flags: str) -> None:
    print(f"\n$ python dist_main.py {' '.join(flags)}".rstrip(), flush=True)
    subprocess.run([sys.executable, "dist_main.py", *flags], cwd=HERE, check=True, timeout=120)


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("localhost", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"dist_server.py did not listen on port {port} within {timeout} s")


def main() -> None:
    run_main()
    run_main("--init-form")
    print("\n$ python dist_server.py &", flush=True)
    server = subprocess.Popen([sys.executable, "dist_server.py"], cwd=HERE)
    try:
        wait_port(12345, 20)
        run_main("--independent")
        run_main("--independent", "--init-form")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print(f"\ndist_server.py exited with code {server.returncode}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
