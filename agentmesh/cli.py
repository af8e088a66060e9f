"""The ``agentmesh`` command: run a server, look at the mesh, bring up a dev registry."""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import _tls, _trust
from ._address import check_port
from ._config import (DEFAULT_CAPACITY, DEFAULT_MAX_MESSAGE_SIZE, ENV_LOG_LEVEL, ENV_TLS_CLIENT_CA, ENVIRONMENT,
                      Settings, check_capacity, env)
from ._runtime import Runtime, set_default_runtime
from ._version import __version__
from .discovery import keys
from .etcd import EtcdClient, EtcdError, parse_registry_url, redact_url
from .server.launcher import check_exposure, require_dial_ca, serve_forever
from .testing import start_dev_registry

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
    return obj


def _port_arg(value: str) -> int:
    try:
        return check_port(value, "--port") or 0
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _capacity_arg(value: str) -> int:
    try:
        return check_capacity(int(value) if value.strip().lstrip("-").isdigit() else value, "--capacity")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _folder_arg(value: str) -> str:
    if not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a folder")
    return os.path.realpath(value)


def _registry_arg(value: str) -> str:
    try:
        parse_registry_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--label wants key=value, got {pair!r}")
        labels[key] = value
    return labels


def _settings(args: argparse.Namespace, **options: object) -> Settings:
    """This command's settings: the environment's, with the etcd flags and the options the command gives."""
    if args.registry and redact_url(args.registry) != args.registry:
        log.warning("agentmesh: the --registry URL holds a password, which every local user can read in the "
                    "process list; put it in a 0600 file and give AGENTMESH_ETCD_PASSWORD_FILE or "
                    "--etcd-password-file instead")
    try:
        return Settings.from_env().replace(etcd_ca=args.etcd_ca, etcd_cert=args.etcd_cert, etcd_key=args.etcd_key,
                                           etcd_password_file=args.etcd_password_file, **options)
    except ValueError as exc:
        raise SystemExit(f"agentmesh: {exc}") from None


def cmd_server(args: argparse.Namespace) -> int:
    if args.token:
        log.warning("agentmesh server: --token on the command line can be read by every local user (ps, "
                    "/proc/PID/cmdline); put the token in a 0600 file and give --token-file FILE or "
                    "AGENTMESH_TOKEN_FILE instead")
    if args.token and args.token_file:
        raise SystemExit("agentmesh server: both --token and --token-file were given; give one")
    secrets = {name: value for name, value in (("token", args.token), ("token_file", args.token_file)) if value}
    # AGENTMESH_TLS_CERT/_KEY are this command's server certificate (--tls-cert), which serve_forever also
    # makes its client certificate; the runtime starts without them so the CA check sees the right pair.
    settings = _settings(args, tls_cert=None, tls_key=None, tls_ca=args.tls_ca, **secrets)
    set_default_runtime(Runtime(settings))   # the server's runtime: secret files are not read a second time
    token = settings.token
    try:
        tls = _tls.ServerTLS.from_options(args.tls_cert, args.tls_key, args.tls_client_ca)
        check_exposure(args.host, token, tls is not None, args.insecure,
                       tls_client_auth=tls is not None and tls.mutual)
        if tls is not None:
            require_dial_ca(tls.cert, args.tls_ca or tls.client_ca)
    except ValueError as exc:
        raise SystemExit(f"agentmesh server: {exc}") from None
    classes = [_load_class(spec) for spec in args.agent_class]
    return serve_forever(host=args.host, port=args.port, capacity=args.capacity,
                         custom_agent_classes=classes, token=token, grace=args.grace,
                         max_message_size=args.max_message_size, registry=args.registry,
                         namespace=args.namespace, labels=args.labels, registry_ttl=args.ttl,
                         advertise_host=args.advertise_host, tls_cert=args.tls_cert, tls_key=args.tls_key,
                         tls_client_ca=args.tls_client_ca, tls_ca=args.tls_ca, insecure=args.insecure,
                         etcd_ca=args.etcd_ca, etcd_cert=args.etcd_cert, etcd_key=args.etcd_key,
                         etcd_password=settings.etcd_password, file_dir=args.file_dir, agent_dir=args.agent_dir,
                         **({"server_id": args.server_id} if args.server_id else {}))


def _registry_url(args: argparse.Namespace) -> str:
    if not args.registry:
        raise SystemExit("no registry: give --registry etcd://host:port or set AGENTMESH_REGISTRY "
                         "(agentmesh registry up starts one for development)")
    return args.registry


async def _read_records(url: str, prefix: str, settings: Settings, namespace: str) -> list[dict]:
    """The records under prefix that are signed with the namespace's token; the others are reported and skipped."""
    if not settings.token:
        raise SystemExit("agentmesh: reading the registry needs the namespace token (AGENTMESH_TOKEN_FILE or "
                         "AGENTMESH_TOKEN) to verify its records")
    key = _trust.namespace_key(settings.token, namespace)
    client = EtcdClient.from_url(url, **settings.etcd_options())
    try:
        kvs, _ = await client.get_prefix(prefix)
    except EtcdError as exc:
        raise SystemExit(f"registry {redact_url(url)}: {exc}") from None
    finally:
        await client.close()
    records = []
    for kv in kvs:
        record = _trust.verify_record(key, kv.key.decode(errors="replace"), kv.value) if kv.lease else None
        if record is None:
            log.warning("ignoring %s: unsigned, forged, signed with another token, or without a lease",
                        kv.key.decode(errors="replace"))
        else:
            records.append(record)
    return records


async def _health(address: str, settings: Settings) -> str:
    channel = (grpc.aio.secure_channel(address, _tls.channel_credentials(settings.tls_ca, settings.tls_cert,
                                                                         settings.tls_key))
               if settings.client_tls else grpc.aio.insecure_channel(address))
    async with channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _age(started_at: float) -> str:
    seconds = max(0, int(time.time() - started_at))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def cmd_servers(args: argparse.Namespace) -> int:
    url = _registry_url(args)
    settings = _settings(args)

    async def gather() -> list[dict]:
        records = await _read_records(url, keys.servers_prefix(args.namespace), settings, args.namespace)
        healths = await asyncio.gather(*(_health(r.get("address", ""), settings) for r in records))
        for record, health in zip(records, healths):
            record["health"] = health
        return sorted(records, key=lambda r: r.get("address", ""))

    records = asyncio.run(gather())
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    rows = [[r.get("server_id", ""), r.get("address", ""), r.get("capacity", ""), r.get("agents", ""),
             r.get("inflight", ""), r.get("health", ""),
             ",".join(f"{k}={v}" for k, v in sorted((r.get("labels") or {}).items())) or "-",
             _age(r.get("started_at", time.time()))] for r in records]
    print(_table(["ID", "ADDRESS", "CAPACITY", "AGENTS", "INFLIGHT", "HEALTH", "LABELS", "AGE"], rows))
    print(f"{len(records)} server(s) in namespace {args.namespace!r} of {redact_url(url)}")
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    url = _registry_url(args)
    records = sorted(asyncio.run(_read_records(url, keys.agents_prefix(args.namespace), _settings(args),
                                               args.namespace)),
                     key=lambda r: (r.get("address", ""), r.get("name", "")))
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    rows = [[r.get("agent_id", ""), r.get("name", ""), r.get("class", ""), r.get("server_id", ""),
             r.get("address", "")] for r in records]
    print(_table(["ID", "NAME", "CLASS", "SERVER", "ADDRESS"], rows))
    print(f"{len(records)} agent(s) in namespace {args.namespace!r} of {redact_url(url)}")
    return 0


def cmd_registry_up(args: argparse.Namespace) -> int:
    """Run the development registry (auth on) until SIGTERM or Ctrl-C; print the variables that use it once."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        registry = start_dev_registry(args.data_dir, args.port or None, fast=False)
    except (OSError, RuntimeError, ValueError, EtcdError) as exc:
        raise SystemExit(f"agentmesh registry up: {exc}") from None
    exports = "\n".join(f"  {line}" for line in registry.exports().splitlines())
    print(f"etcd {registry.pid} serving on {registry.etcd.endpoint} with auth on (data in {registry.directory});"
          f" use it with:\n{exports}", flush=True)
    try:
        while not stop.wait(0.5) and registry.etcd.running:
            pass
    finally:
        registry.stop()
    return 0


def _add_registry_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", default=env(ENVIRONMENT["registry"]), type=_registry_arg,
                        help="etcd://host:port[,host:port...] (default: AGENTMESH_REGISTRY)")
    parser.add_argument("--namespace", default=env(ENVIRONMENT["namespace"], "default"))
    parser.add_argument("--etcd-ca", default=env(ENVIRONMENT["etcd_ca"]), metavar="PEM",
                        help="CA of etcd's certificate, for etcds:// (default: AGENTMESH_ETCD_CA)")
    parser.add_argument("--etcd-cert", default=env(ENVIRONMENT["etcd_cert"]), metavar="PEM",
                        help="client certificate for etcd mTLS (default: AGENTMESH_ETCD_CERT)")
    parser.add_argument("--etcd-key", default=env(ENVIRONMENT["etcd_key"]), metavar="PEM",
                        help="its key (default: AGENTMESH_ETCD_KEY)")
    parser.add_argument("--etcd-password-file", default=None, metavar="FILE",
                        help="file holding the password of the registry URL's user "
                             "(default: AGENTMESH_ETCD_PASSWORD_FILE)")


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
    server.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
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
                        help="also host the agent classes defined in DIR's .py files (as AgentScope's --agent-dir)")
    server.add_argument("--file-dir", type=_folder_arg, default=None, metavar="DIR",
                        help="serve the files under DIR to authenticated callers (a reply's Msg.url there "
                             "arrives as a local copy); default: no files")
    server.add_argument("--grace", type=float, default=5.0, help="seconds running calls get to finish on stop")
    server.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE)
    server.set_defaults(func=cmd_server)

    servers = sub.add_parser("servers", help="the servers registered in the registry")
    _add_registry_args(servers)
    servers.add_argument("--json", action="store_true", help="JSON instead of a table")
    servers.set_defaults(func=cmd_servers)

    agents = sub.add_parser("agents", help="where each agent lives")
    _add_registry_args(agents)
    agents.add_argument("--json", action="store_true", help="JSON instead of a table")
    agents.set_defaults(func=cmd_agents)

    registry = sub.add_parser("registry", help="the registry (etcd)")
    registry_sub = registry.add_subparsers(dest="registry_command", required=True)
    up = registry_sub.add_parser("up", help="run a local single-node etcd for development")
    up.add_argument("--port", type=int, default=0, help="client port (default: a free one)")
    up.add_argument("--data-dir", default=None,
                    help="directory for etcd's data, the root password and the namespace token; reused when "
                         "started again (default: a temporary dir)")
    up.set_defaults(func=cmd_registry_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentmesh`` console script."""
    args = build_parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "server" else "WARNING")
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "label", None) is not None:
        args.labels = _labels(args.label)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
