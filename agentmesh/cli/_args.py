"""Arguments the ``agentmesh`` commands share: their parsers, and the settings they make."""
from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Sequence

from .._address import check_port
from .._config import ENVIRONMENT, Settings, check_capacity, check_state_store_wait, env
from ..discovery.records import check_labels, printable
from ..etcd import parse_registry_url, redact_url

log = logging.getLogger("agentmesh")

#: the prefix a message made elsewhere may carry already ("agentmesh: ", "agentmesh server: ", "agentmesh TLS: ")
_PREFIX = re.compile(r"^agentmesh(?: [A-Za-z][A-Za-z-]*)*: ")

#: what every command that reads the registry needs, for its help
TOKEN_NEEDED = ("Needs the namespace token the servers were given (AGENTMESH_TOKEN_FILE, else AGENTMESH_TOKEN): "
                "the registry's records are signed with it, and records that do not verify are skipped.")


def command_error(command: str, problem: object) -> SystemExit:
    """The exit of `agentmesh COMMAND` for problem (an exception or a message): its message, prefixed once with
    "agentmesh COMMAND: " whatever prefix it came with."""
    return SystemExit(f"agentmesh {command}: {_PREFIX.sub('', str(problem), count=1)}")


def _port_arg(value: str) -> int:
    try:
        return check_port(value, "--port") or 0
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _metrics_port_arg(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port number 0-65535 (0: a free one), not {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port number 0-65535 (0: a free one), not {port}")
    return port


def _capacity_arg(value: str) -> int:
    try:
        return check_capacity(int(value) if value.strip().lstrip("-").isdigit() else value, "--capacity")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _state_store_wait_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds, not {value!r}") from None
    try:
        return check_state_store_wait(seconds, "--state-store-wait")
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
    """The --label KEY=VALUE pairs as a dict, each checked (records.check_labels); a bad one ends the command."""
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--label wants key=value, got {printable(repr(pair))}")
        labels[key] = value
    try:
        return check_labels(labels)
    except ValueError as exc:
        raise SystemExit(f"agentmesh server: bad --label: {exc}") from None


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
        raise command_error(args.command, exc) from None


def _add_registry_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", default=env(ENVIRONMENT["registry"]), type=_registry_arg,
                        help="etcd://host:port[,host:port...] (default: AGENTMESH_REGISTRY)")
    parser.add_argument("--namespace", default=env(ENVIRONMENT["namespace"], "default"),
                        help="the namespace of servers and agents in the registry (default: AGENTMESH_NAMESPACE, "
                             "else 'default')")
    parser.add_argument("--etcd-ca", default=env(ENVIRONMENT["etcd_ca"]), metavar="PEM",
                        help="CA of etcd's certificate, for etcds:// (default: AGENTMESH_ETCD_CA)")
    parser.add_argument("--etcd-cert", default=env(ENVIRONMENT["etcd_cert"]), metavar="PEM",
                        help="client certificate for etcd mTLS (default: AGENTMESH_ETCD_CERT)")
    parser.add_argument("--etcd-key", default=env(ENVIRONMENT["etcd_key"]), metavar="PEM",
                        help="its key (default: AGENTMESH_ETCD_KEY)")
    parser.add_argument("--etcd-password-file", default=None, metavar="FILE",
                        help="file holding the password of the registry URL's user "
                             "(default: AGENTMESH_ETCD_PASSWORD_FILE)")


def _add_tls_client_args(parser: argparse.ArgumentParser) -> None:
    """The TLS options of a command that dials agent servers as a client (to ask their health)."""
    parser.add_argument("--tls-ca", default=env(ENVIRONMENT["tls_ca"]), metavar="PEM",
                        help="CA the servers' certificates chain to, to reach TLS servers (default: AGENTMESH_TLS_CA)")
    parser.add_argument("--tls-cert", default=env(ENVIRONMENT["tls_cert"]), metavar="PEM",
                        help="client certificate, for servers that require one (mutual TLS) "
                             "(default: AGENTMESH_TLS_CERT)")
    parser.add_argument("--tls-key", default=env(ENVIRONMENT["tls_key"]), metavar="PEM",
                        help="its private key (default: AGENTMESH_TLS_KEY)")
