#!/usr/bin/env bash
# A three-member etcd cluster on this machine (loopback, free ports), for trying
# failover of the registry itself. Prints the AGENTMESH_REGISTRY listing all
# three members; Ctrl-C stops them all.
#   registry/cluster-etcd.sh [DATA_DIR]
set -euo pipefail
source "$(dirname "$0")/../scripts/_setup.sh"
exec "$VENV/bin/python" - "$@" <<'PY'
import signal, sys, threading
from agentmesh.testing import start_cluster

members, url = start_cluster(3, base_dir=sys.argv[1] if len(sys.argv) > 1 else None, fast=False)
stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
print(f"etcd cluster up: pids {[m.pid for m in members]}; use it with:\n  export AGENTMESH_REGISTRY={url}", flush=True)
try:
    while not stop.wait(0.5):
        pass
finally:
    for m in members:
        m.stop()
PY
