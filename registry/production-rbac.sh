#!/usr/bin/env bash
# Turn on etcd auth for agentmesh with least privilege: a role and a user for agent servers
# (read/write under /agentmesh/<namespace>/) and for clients (read-only there), then `auth enable`.
#
#   registry/production-rbac.sh --endpoints https://h1:2379,https://h2:2379 --cacert ca.crt \
#       --root-password-file root.password --out DIR [--namespace NS] [--cert c.crt --key c.key]
#
# - TLS only: every endpoint must be https:// (passwords and auth tokens cross the network).
# - root: if etcd has no root user yet, it is created with the password in --root-password-file;
#   otherwise that file must hold root's password. It reaches etcdctl in its environment only.
#   Ends by checking root logs in with it.
# - Users get random passwords, written to DIR/<user>.password (mode 0600) and handed to etcdctl
#   on stdin, never in argv. An existing user keeps its password (and is granted its role again).
# - Namespace "default" gets roles and users named agentmesh-server and agentmesh-client; another
#   namespace NS gets agentmesh-server-NS and agentmesh-client-NS, so namespaces stay apart.
# - Idempotent: run it again, or once per namespace. etcdctl comes from PATH, or $ETCDCTL.
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2; }
die() { echo "production-rbac: $*" >&2; exit 1; }

endpoints="" cacert="" cert="" key="" root_file="" out="" namespace="default"
while [ $# -gt 0 ]; do
  case "$1" in
    --endpoints) endpoints="$2"; shift 2 ;;
    --cacert) cacert="$2"; shift 2 ;;
    --cert) cert="$2"; shift 2 ;;
    --key) key="$2"; shift 2 ;;
    --root-password-file) root_file="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --namespace) namespace="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "production-rbac: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$endpoints" ] && [ -n "$root_file" ] && [ -n "$out" ] || usage
IFS=',' read -r -a endpoint_list <<< "$endpoints"
for endpoint in "${endpoint_list[@]}"; do
  case "$endpoint" in
    https://*) ;;
    *) die "endpoint $endpoint is not https://: give etcd's TLS client URLs (passwords cross the network)" ;;
  esac
done
[[ "$namespace" =~ ^[A-Za-z0-9._-]+$ ]] || die "namespace $namespace: use letters, digits, '.', '_' or '-'"
[ -z "$cert" ] || [ -n "$key" ] || die "--cert needs --key"
[ -r "$root_file" ] || die "cannot read --root-password-file $root_file"
root_password="$(head -n 1 "$root_file" | tr -d '\r\n')"
[ -n "$root_password" ] || die "$root_file is empty; put root's password on its first line"
ETCDCTL="${ETCDCTL:-etcdctl}"
command -v "$ETCDCTL" >/dev/null || die "no etcdctl on PATH (or set ETCDCTL=/path/to/etcdctl)"

suffix=""
[ "$namespace" = "default" ] || suffix="-$namespace"
server="agentmesh-server$suffix"
client="agentmesh-client$suffix"
prefix="/agentmesh/$namespace/"

tls_args=(--endpoints="$endpoints")
[ -z "$cacert" ] || tls_args+=(--cacert="$cacert")
[ -z "$cert" ] || tls_args+=(--cert="$cert" --key="$key")

# With auth on, root's credentials travel in etcdctl's environment (readable by this user only), not
# in argv. While auth is still off (anyone may list users), etcdctl goes without them.
auth_on=1
"$ETCDCTL" "${tls_args[@]}" user list >/dev/null 2>&1 && auth_on=0
ctl() {
  if [ "$auth_on" = 1 ]; then
    ETCDCTL_USER=root ETCDCTL_PASSWORD="$root_password" "$ETCDCTL" "${tls_args[@]}" "$@"
  else
    "$ETCDCTL" "${tls_args[@]}" "$@"
  fi
}
has() {   # has user|role NAME
  local names
  names="$(ctl "$1" list)" || die "etcdctl $1 list failed: is root's password right and etcd reachable over TLS?"
  grep -qx -- "$2" <<< "$names"
}

random_password() { LC_ALL=C tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 40 || true; }

add_user() {   # add_user NAME: a random password in $out/NAME.password (0600), given on stdin
  local name="$1" file="$out/$1.password" password
  if has user "$name"; then
    echo "user $name exists; its password is unchanged"
    return
  fi
  password="$(random_password)"
  (umask 077; printf '%s\n' "$password" > "$file")
  printf '%s\n' "$password" | ctl user add "$name" --interactive=false >/dev/null
  echo "user $name created; password in $file"
}

mkdir -p "$out"
chmod 700 "$out"

if ! has user root; then
  printf '%s\n' "$root_password" | ctl user add root --interactive=false >/dev/null
  echo "user root created with the password in $root_file"
fi
has role root || ctl role add root >/dev/null
ctl user grant-role root root >/dev/null

for role in "$server" "$client"; do
  has role "$role" || { ctl role add "$role" >/dev/null; echo "role $role created"; }
done
ctl role grant-permission "$server" --prefix=true readwrite "$prefix" >/dev/null
ctl role grant-permission "$client" --prefix=true read "$prefix" >/dev/null
echo "role $server: readwrite on $prefix; role $client: read on $prefix"

for user in "$server" "$client"; do
  add_user "$user"
  ctl user grant-role "$user" "$user" >/dev/null
done

if [ "$auth_on" = 0 ]; then
  ctl auth enable >/dev/null
  auth_on=1
fi
ctl user get root >/dev/null || die "root cannot log in with the password in $root_file"
echo "auth enabled"

hosts="${endpoints//https:\/\//}"
cat <<EOF

Agent servers of namespace $namespace:
  export AGENTMESH_REGISTRY=etcds://$server@$hosts AGENTMESH_NAMESPACE=$namespace
  export AGENTMESH_ETCD_PASSWORD_FILE=$out/$server.password${cacert:+ AGENTMESH_ETCD_CA=$cacert}
Clients (placement, agentmesh servers/agents):
  export AGENTMESH_REGISTRY=etcds://$client@$hosts AGENTMESH_NAMESPACE=$namespace
  export AGENTMESH_ETCD_PASSWORD_FILE=$out/$client.password${cacert:+ AGENTMESH_ETCD_CA=$cacert}
Both also need the namespace token (AGENTMESH_TOKEN_FILE): it signs the records.
EOF
