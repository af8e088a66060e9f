"""A real Prometheus server for tests: Debian's `prometheus` binary, on a free port, stopped by PID."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.parse
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)
    if not found:
        raise RuntimeError("no prometheus binary: scripts/test installs Debian's `prometheus` package "
                           "(apt-get install prometheus)")
    return found


class Prometheus:
    """prometheus scraping the targets of a file_sd file every second."""

    def __init__(self, folder: str, targets_file: str) -> None:
        self.folder = folder
        self.port = free_port()
        config = os.path.join(folder, "prometheus.yml")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                global:
                  scrape_interval: 1s
                  scrape_timeout: 900ms
                scrape_configs:
                  - job_name: agentmesh
                    file_sd_configs:
                      - files: ["{targets_file}"]
                        refresh_interval: 1s
                """))
        self.log = open(os.path.join(folder, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={os.path.join(folder, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1).read()
            return True
        except OSError:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}); see {self.log.name}") from None
            return False

    def query(self, expr: str) -> list[dict]:
        """The instant vector of expr: [{"metric": {...}, "value": [t, "v"]}]."""
        return self.get("/api/v1/query", query=expr)["data"]["result"]

    def up_targets(self) -> list[dict]:
        return [t for t in self.get("/api/v1/targets")["data"]["activeTargets"] if t["health"] == "up"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def wait_ready(prometheus: Prometheus, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not prometheus.ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"prometheus did not become ready in {timeout} s")
        time.sleep(0.1)
