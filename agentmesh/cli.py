"""The ``agentmesh`` command: run a server, look at the mesh, bring up a dev registry."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from . import __version__
from .server.launcher import DEFAULT_CAPACITY, check_exposure, serve_forever

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


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--label wants key=value, got {pair!r}")
        labels[key] = value
    return labels


def cmd_server(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("AGENTMESH_TOKEN") or None
    try:
        check_exposure(args.host, token, False, args.insecure)
    except ValueError as exc:
        raise SystemExit(f"agentmesh server: {exc}") from None
    classes = [_load_class(spec) for spec in args.agent_class]
    return serve_forever(host=args.host, port=args.port, capacity=args.capacity,
                         custom_agent_classes=classes, token=token, grace=args.grace,
                         max_message_size=args.max_message_size,
                         on_ready=lambda port, sid: log.warning(
                             "agentmesh server %s listening on %s:%d", sid, args.host, port))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentmesh", description="Run agents across processes and machines.")
    parser.add_argument("--version", action="version", version=f"agentmesh {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("AGENTMESH_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    server = sub.add_parser("server", help="run an agent server in the foreground")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    server.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY, help="agents this server accepts")
    server.add_argument("--agent-class", action="append", default=[], metavar="MODULE:CLASS",
                        help="a class this server hosts (repeatable)")
    server.add_argument("--registry", default=os.environ.get("AGENTMESH_REGISTRY"),
                        help="etcd://host:port[,host:port...] to register in")
    server.add_argument("--namespace", default=os.environ.get("AGENTMESH_NAMESPACE", "default"))
    server.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    server.add_argument("--token", default=None, help="shared token (default: AGENTMESH_TOKEN)")
    server.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback address with neither token nor TLS")
    server.add_argument("--grace", type=float, default=5.0, help="seconds running calls get to finish on stop")
    server.add_argument("--max-message-size", type=int, default=64 * 1024 * 1024)
    server.set_defaults(func=cmd_server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentmesh`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "label", None) is not None:
        args.labels = _labels(args.label)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
