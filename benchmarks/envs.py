"""Virtual environments of the peers the benchmarks compare agentmesh with.

Each peer gets its own venv under ``benchmarks/.envs/<peer>/`` (gitignored),
created on first use with ``python -m venv`` and ``pip install``. A peer whose
install fails is reported as such by the harness (the reason comes from the
install log), never silently dropped.

    python benchmarks/envs.py            # create / check every peer's venv
    python benchmarks/envs.py ray        # just one
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ENVS = os.path.join(HERE, ".envs")

#: peer -> how to install it and how to ask it for its versions
PEERS: dict[str, dict] = {
    "agentscope": {
        "label": "AgentScope",
        # AgentScope 0.1.6 pins grpcio 1.60, so it cannot share agentmesh's environment;
        # tqdm / sqlalchemy<2 / flask-sqlalchemy<3.1 are imports 0.1.6 needs but does not declare.
        "pip": ["agentscope[distribute]==0.1.6", "tqdm", "sqlalchemy<2", "flask-sqlalchemy<3.1"],
        "versions": "import agentscope, grpc; print(json.dumps({'agentscope': agentscope.__version__, "
                    "'grpcio': grpc.__version__}))",
    },
    "ray": {
        "label": "Ray",
        "pip": ["ray"],
        "versions": "import ray, grpc; print(json.dumps({'ray': ray.__version__, 'grpcio': grpc.__version__}))",
    },
}

INSTALL_TIMEOUT = 1800.0
STAMP = ".bench-installed"


def env_dir(peer: str) -> str:
    return os.path.join(ENVS, peer)


def python_of(peer: str) -> str:
    return os.path.join(env_dir(peer), "bin", "python")


def log_path(peer: str) -> str:
    return os.path.join(ENVS, f"{peer}.install.log")


def _stamp_path(peer: str) -> str:
    return os.path.join(env_dir(peer), STAMP)


def is_ready(peer: str) -> bool:
    """True when the peer's venv was installed completely, with today's package list."""
    try:
        with open(_stamp_path(peer)) as f:
            return json.load(f).get("pip") == PEERS[peer]["pip"] and os.path.exists(python_of(peer))
    except (OSError, ValueError):
        return False


def versions(peer: str) -> dict:
    """Versions reported by the peer's own interpreter (empty if it cannot tell)."""
    try:
        out = subprocess.run([python_of(peer), "-c", "import json; " + PEERS[peer]["versions"]],
                             capture_output=True, text=True, timeout=120, env=_quiet_env())
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception:  # noqa: BLE001 - versions are informative only
        return {}


def _quiet_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return env


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("WARNING: Location")]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("ERROR") or "Error" in ln]
    return " / ".join((errors or lines)[-n:])


def ensure(peer: str, install: bool = True, log=print) -> tuple[bool, str]:
    """Make sure the peer's venv exists. Returns (ready, reason when not ready)."""
    if is_ready(peer):
        return True, ""
    if not install:
        return False, "venv not created (quick mode does not install peers)"
    os.makedirs(ENVS, exist_ok=True)
    spec = PEERS[peer]["pip"]
    log(f"[envs] creating {env_dir(peer)}: pip install {' '.join(spec)} (log: {log_path(peer)})")
    started = time.monotonic()
    with open(log_path(peer), "w") as out:
        try:
            if not os.path.exists(python_of(peer)):
                subprocess.run([sys.executable, "-m", "venv", env_dir(peer)], stdout=out, stderr=subprocess.STDOUT,
                               check=True, timeout=300)
            subprocess.run([python_of(peer), "-m", "pip", "install", "--upgrade", "pip"], stdout=out,
                           stderr=subprocess.STDOUT, timeout=600, env=_quiet_env())   # best effort
            subprocess.run([python_of(peer), "-m", "pip", "install", *spec], stdout=out, stderr=subprocess.STDOUT,
                           check=True, timeout=INSTALL_TIMEOUT, env=_quiet_env())
        except subprocess.TimeoutExpired as exc:
            return False, f"pip install timed out after {exc.timeout:.0f} s (see {os.path.relpath(log_path(peer))})"
        except (subprocess.CalledProcessError, OSError) as exc:
            why = _tail(log_path(peer)) or str(exc)
            return False, f"install failed: {why} (see {os.path.relpath(log_path(peer), os.path.dirname(HERE))})"
    with open(_stamp_path(peer), "w") as f:
        json.dump({"pip": spec, "installed_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "seconds": round(time.monotonic() - started, 1), "versions": versions(peer)}, f)
    log(f"[envs] {peer} ready in {time.monotonic() - started:.0f} s: {versions(peer)}")
    return True, ""


if __name__ == "__main__":
    for name in sys.argv[1:] or list(PEERS):
        ok, reason = ensure(name)
        print(f"{name}: {'ready' if ok else 'NOT READY: ' + reason}")
