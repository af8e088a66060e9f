"""The ``agentmesh`` command: run a server, look at the mesh, bring up a dev registry."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import Sequence

from .. import _tls
from .._config import (DEFAULT_CAPACITY, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_STATE_STORE_WAIT, ENV_LOG_LEVEL,
                       ENV_STATE_STORE_PASSWORD_FILE, ENV_TLS_CLIENT_CA, ENVIRONMENT, env)
from .._runtime import Runtime, check_state_store, set_default_runtime
from .._tokens import new_token
from .._version import __version__
from ..rpc import RpcMeta
from ..server import OwnCalls, ServerConfig, classes_in_folder
from ..server.launcher import check_exposure, require_dial_ca, serve_forever
from ..store import StoreError, parse_store_url
from ._args import (TOKEN_NEEDED, _add_registry_args, _add_tls_client_args, _capacity_arg, _folder_arg, _labels,
                    _metrics_port_arg, _port_arg, _settings, _state_store_wait_arg, command_error)
from ._registry import cmd_agents, cmd_prometheus_targets, cmd_registry_up, cmd_servers
from ._top import cmd_top

log = logging.getLogger("agentmesh")


def _load_class(spec: str) -> type:
    module_name, _, qualname = spec.partition(":")
    if not module_name or not qualname:
        raise SystemExit(f"--agent-class wants module:Class, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"--agent-class {spec}: cannot import {module_name}: {exc}") from None
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"--agent-class {spec}: {module_name} has no {qualname}") from None
    if not isinstance(obj, type):
        raise SystemExit(f"--agent-class {spec} is not a class")
    if not isinstance(obj, RpcMeta):    # AgentBase's subclasses have it too
        raise SystemExit(f"--agent-class {spec} is not an agent class: give a subclass of agentmesh.AgentBase, "
                         f"or a class whose metaclass is agentmesh.rpc.RpcMeta")
    return obj


def state_store_options(args: argparse.Namespace) -> dict[str, str | None]:
    """The server's ``state_store`` and ``state_store_password_file`` (for its ServerConfig), checked now: a URL
    it cannot use ends the command with one line naming what is wrong (never the password).

    AGENTMESH_STATE_STORE_PASSWORD_FILE serves a PostgreSQL store only (a
    SQLite one has no password); --state-store-password-file with a SQLite
    store, or without a store, is refused.
    """
    password_file = args.state_store_password_file
    try:
        url = check_state_store(args.state_store)
        if password_file is None and url and parse_store_url(url).kind == "postgresql":
            password_file = env(ENV_STATE_STORE_PASSWORD_FILE)
        check_state_store(url, password_file)
    except ValueError as exc:
        raise command_error("server", exc) from None
    return {"state_store": url, "state_store_password_file": password_file and os.path.abspath(password_file)}


def cmd_server(args: argparse.Namespace) -> int:
    if args.token:
        log.warning("agentmesh server: --token on the command line can be read by every local user (ps, "
                    "/proc/PID/cmdline); put the token in a 0600 file and give --token-file FILE or "
                    "AGENTMESH_TOKEN_FILE instead")
    if args.token and args.token_file:
        raise SystemExit("agentmesh server: both --token and --token-file were given; give one")
    secrets = {name: value for name, value in (("token", args.token), ("token_file", args.token_file)) if value}
    store = state_store_options(args)
    # AGENTMESH_TLS_CERT/_KEY are this command's server certificate (--tls-cert), which serve_forever also
    # makes its client certificate; the runtime starts without them so the CA check sees the right pair.
    settings = _settings(args, tls_cert=None, tls_key=None, tls_ca=args.tls_ca, state_store=store["state_store"],
                         **secrets)
    set_default_runtime(Runtime(settings))   # the server's runtime: secret files are not read a second time
    token = settings.token
    try:
        tls = _tls.ServerTLS.from_options(args.tls_cert, args.tls_key, args.tls_client_ca)
        check_exposure(args.host, token, tls is not None, args.insecure,
                       tls_client_auth=tls is not None and tls.mutual)
        if tls is not None:
            require_dial_ca(tls.cert, args.tls_ca or tls.client_ca)
    except ValueError as exc:
        raise command_error("server", exc) from None
    classes = [_load_class(spec) for spec in args.agent_class]
    if args.agent_dir:
        try:
            classes += classes_in_folder(args.agent_dir)
        except ValueError as exc:   # a file that fails to import: named, with how to keep it out
            raise command_error("server", exc) from None
    own_calls = OwnCalls(token=token, tls_ca=args.tls_ca, insecure=args.insecure, etcd_ca=args.etcd_ca,
                         etcd_cert=args.etcd_cert, etcd_key=args.etcd_key, etcd_password=settings.etcd_password)
    config = ServerConfig(bind_host=args.host, port=args.port, advertise_host=args.advertise_host,
                          capacity=args.capacity, namespace=args.namespace, token=token, tls=tls,
                          registry=args.registry, registry_ttl=args.ttl, labels=args.labels,
                          agent_classes=tuple(classes), file_dir=args.file_dir, metrics_port=args.metrics_port,
                          grace=args.grace, max_message_size=args.max_message_size, own_calls=own_calls, **store,
                          state_store_wait=args.state_store_wait,
                          **({"server_id": args.server_id} if args.server_id else {}))
    try:
        return serve_forever(config)
    except StoreError as exc:   # a store it cannot open or use: one line naming it (never its password)
        raise command_error("server", exc) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentmesh", description="Run agents across processes and machines.")
    parser.add_argument("--version", action="version", version=f"agentmesh {__version__}")
    parser.add_argument("--log-level", default=env(ENV_LOG_LEVEL),
                        help="DEBUG, INFO, WARNING, ... (default: AGENTMESH_LOG_LEVEL, else INFO for "
                             "`server`, whose start and stop are its output, and WARNING otherwise)")
    sub = parser.add_subparsers(dest="command", required=True)

    server = sub.add_parser("server", help="run an agent server in the foreground")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--port", type=_port_arg, default=0, help="port 1-65535 (default, 0 or -1: a free one)")
    server.add_argument("--capacity", type=_capacity_arg, default=DEFAULT_CAPACITY,
                        help=f"agents this server accepts (default {DEFAULT_CAPACITY:,}: no cap to speak of)")
    server.add_argument("--agent-class", action="append", default=[], metavar="MODULE:CLASS",
                        help="a class this server hosts (repeatable)")
    _add_registry_args(server)
    server.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="a label of this server in the registry, for placement constraints "
                             "(to_dist(labels={KEY: VALUE})) (repeatable)")
    server.add_argument("--ttl", type=int, default=3, help="registry lease TTL in seconds (default 3)")
    server.add_argument("--advertise-host", default=None,
                        help="host others dial (default: --host, or this machine's address for 0.0.0.0)")
    server.add_argument("--token", default=None,
                        help="shared token; visible to every local user in the process list, prefer --token-file")
    server.add_argument("--token-file", default=None, metavar="FILE",
                        help="file holding the shared token, read once (default: AGENTMESH_TOKEN_FILE, "
                             "else AGENTMESH_TOKEN)")
    server.add_argument("--tls-cert", default=env(ENVIRONMENT["tls_cert"]), metavar="PEM",
                        help="serve TLS with this certificate (default: AGENTMESH_TLS_CERT)")
    server.add_argument("--tls-key", default=env(ENVIRONMENT["tls_key"]), metavar="PEM",
                        help="the certificate's private key, unencrypted (default: AGENTMESH_TLS_KEY)")
    server.add_argument("--tls-client-ca", default=env(ENV_TLS_CLIENT_CA),
                        metavar="PEM", help="require client certificates signed by this CA: mutual TLS "
                                            "(default: AGENTMESH_TLS_CLIENT_CA)")
    server.add_argument("--tls-ca", default=env(ENVIRONMENT["tls_ca"]), metavar="PEM",
                        help="CA that other servers' certificates chain to, for this server's own calls "
                             "(placeholder fetches, proxies in its agents) (default: AGENTMESH_TLS_CA, "
                             "else --tls-client-ca); needed with --tls-cert")
    server.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without TLS, or without a token or mutual TLS "
                             "(with a warning: anyone on the network could read the calls, or run code); "
                             "this server's own calls may then use plaintext to network addresses too")
    server.add_argument("--server-id", default=None, help="this server's id (default: a random one)")
    server.add_argument("--agent-dir", type=_folder_arg, default=None, metavar="DIR",
                        help="also host the agent classes defined in DIR's .py files (as AgentScope's --agent-dir); "
                             "files named _*.py are skipped, and one that fails to import stops the server")
    server.add_argument("--file-dir", type=_folder_arg, default=None, metavar="DIR",
                        help="serve the files under DIR to authenticated callers (a reply's Msg.url there "
                             "arrives as a local copy); default: no files")
    server.add_argument("--metrics-port", type=_metrics_port_arg, default=None, metavar="PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port; default: off); "
                             "the port goes into the registry record")
    server.add_argument("--state-store", default=env(ENVIRONMENT["state_store"]), metavar="URL",
                        help="the store where agents' state outlives this server: sqlite:///path/state.db, "
                             "sqlite:relative/path.db or postgresql://user@host:5432/dbname, with no password in "
                             "it (default: AGENTMESH_STATE_STORE, else none)")
    server.add_argument("--state-store-password-file", default=None, metavar="FILE",
                        help="file holding the PostgreSQL store's password on one line, mode 0600 "
                             "(default: AGENTMESH_STATE_STORE_PASSWORD_FILE)")
    server.add_argument("--state-store-wait", type=_state_store_wait_arg, default=DEFAULT_STATE_STORE_WAIT,
                        metavar="SECONDS", help="how long a durable agent's reply waits for its commit while the "
                                                f"store does not answer, before the call fails (default: "
                                                f"{DEFAULT_STATE_STORE_WAIT:g})")
    server.add_argument("--grace", type=float, default=5.0, help="seconds running calls get to finish on stop")
    server.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE)
    server.set_defaults(func=cmd_server)

    servers = sub.add_parser("servers", help="the servers registered in the registry",
                             description="The servers registered in the registry, with their health. " + TOKEN_NEEDED)
    _add_registry_args(servers)
    _add_tls_client_args(servers)
    servers.add_argument("--json", action="store_true", help="JSON instead of a table")
    servers.set_defaults(func=cmd_servers)

    agents = sub.add_parser("agents", help="where each agent lives",
                            description="Where each agent lives, from the registry. " + TOKEN_NEEDED)
    _add_registry_args(agents)
    agents.add_argument("--server", default=None, metavar="ID", help="only the agents of this server")
    agents.add_argument("--class", dest="cls", default=None, metavar="NAME",
                        help="only the agents of this class (module:Class, or the class name alone)")
    agents.add_argument("--name", default=None, metavar="GLOB", help="only the agents whose name (or stored name) "
                                                                     "matches this shell pattern (Writer*)")
    agents.add_argument("--state-store", default=env(ENVIRONMENT["state_store"]), metavar="URL",
                        help="also show each agent's stored name and lifetime, and the stored agents no server "
                             "hosts now, from this state store (its password only from the file "
                             "AGENTMESH_STATE_STORE_PASSWORD_FILE names) (default: AGENTMESH_STATE_STORE, else none)")
    agents.add_argument("--json", action="store_true", help="JSON instead of a table")
    agents.set_defaults(func=cmd_agents)

    targets = sub.add_parser("prometheus-targets", help="the servers' metrics endpoints as a Prometheus "
                                                        "file_sd target file")
    _add_registry_args(targets)
    targets.add_argument("--output", required=True, metavar="FILE", help="the target file (replaced atomically)")
    targets.add_argument("--watch", action="store_true", help="keep following the registry, rewriting FILE")
    targets.add_argument("--interval", type=float, default=1.0, help="with --watch: seconds between checks")
    targets.set_defaults(func=cmd_prometheus_targets)
    top = sub.add_parser("top", help="the servers live: agents, calls/s, p50/p99, in-flight, queued",
                         description="The servers live, from their registry records and /metrics (servers need "
                                     "--metrics-port). " + TOKEN_NEEDED)
    _add_registry_args(top)
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    top.add_argument("--once", action="store_true", help="one sample (two scrapes --interval apart), then exit")
    top.add_argument("--json", action="store_true", help="with --once: print the sample as JSON")
    top.set_defaults(func=cmd_top)
    registry = sub.add_parser("registry", help="the registry (etcd)")
    registry_sub = registry.add_subparsers(dest="registry_command", required=True)
    up = registry_sub.add_parser("up", help="run a local single-node etcd for development")
    up.add_argument("--port", type=int, default=0, help="client port (default: a free one)")
    up.add_argument("--data-dir", default=None,
                    help="directory for etcd's data, the root password and the namespace token; reused when "
                         "started again (default: a temporary dir)")
    up.set_defaults(func=cmd_registry_up)
    token = sub.add_parser("token", help="namespace tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    new = token_sub.add_parser("new", help="make a new random token (256 bits): into a new 0600 file with "
                                           "--output FILE, else on standard output")
    new.add_argument("--output", default=None, metavar="FILE",
                     help="a new file to write it to, made 0600 (an existing file is refused)")
    new.set_defaults(func=cmd_token_new)
    return parser


def cmd_token_new(args: argparse.Namespace) -> int:
    """Make a token that is a key: into a new private file, or printed."""
    token = new_token()
    if args.output is None:
        sys.stdout.write(token + "\n")
        return 0
    try:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        raise SystemExit(f"agentmesh token new: cannot make {args.output}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentmesh`` console script."""
    args = build_parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "server" else "WARNING")
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "label", None) is not None:
        args.labels = _labels(args.label)
    try:
        code = args.func(args)
        sys.stdout.flush()          # here, where a reader that went away is handled, not at exit
        return code
    except ValueError as exc:       # a setting or file that is wrong, said by its message: no traceback
        log.debug("agentmesh %s: %s", args.command, exc, exc_info=True)
        raise command_error(args.command, exc) from None
    except BrokenPipeError:         # the reader went away (agentmesh agents | head): end as quietly as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # so exit's own flush cannot fail again
        return 128 + signal.SIGPIPE
