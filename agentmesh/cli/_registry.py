"""The commands that read the registry: servers, agents, prometheus-targets; and a dev registry."""
from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import signal
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .. import _tls, _trust
from .._config import Settings
from ..discovery import ServerRecord, ServerView, keys
from ..discovery.records import RecordWarnings, agent_record, printable, server_record
from ..discovery.prometheus import write_from_registry
from ..etcd import EtcdClient, EtcdError, redact_url
from ..testing import start_dev_registry
from ._args import _settings, command_error


def _registry_url(args: argparse.Namespace) -> str:
    if not args.registry:
        raise SystemExit("no registry: give --registry etcd://host:port or set AGENTMESH_REGISTRY "
                         "(agentmesh registry up starts one for development)")
    return args.registry


async def _read_records(url: str, prefix: str, settings: Settings, namespace: str) -> tuple[list[dict], int]:
    """The valid records under prefix (records.py: verified, bound to their lease, fresh, matching the schema),
    and how many did not verify with our token; the others are reported, one warning each, and skipped."""
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
    read = server_record if prefix == keys.servers_prefix(namespace) else agent_record
    warnings = RecordWarnings(url)
    records, unverified = [], 0
    for kv in kvs:
        path = kv.key.decode("utf-8", "surrogateescape")
        try:
            records.append(read(key, path, kv.value, kv.lease))
        except _trust.BadRecord as exc:
            unverified += isinstance(exc, _trust.UnverifiedRecord)
            warnings.skip(path, str(exc))
    return records, unverified


def _check_token(command: str, records: list[dict], unverified: int, what: str, namespace: str) -> None:
    """Exit with why when records were there but none verified: the token given is most likely not the one the
    servers sign with (a listing of nothing, exit 0, would say the namespace is empty)."""
    if unverified and not records:
        raise command_error(command, f"none of the {unverified} {what} record(s) in namespace {namespace!r} "
                                     f"verifies with the token given: it is probably not the servers' token "
                                     f"(AGENTMESH_TOKEN_FILE, AGENTMESH_TOKEN)")


def _health_hint(detail: str, settings: Settings) -> str:
    """Why a health check that failed during the connection's handshake likely did, for the HEALTH column."""
    if "Socket closed" not in detail and "handshake" not in detail.lower():
        return ""
    if not settings.client_tls:
        return " (TLS? set --tls-ca or AGENTMESH_TLS_CA)"
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        return " (another CA? check --tls-ca)"
    if "WRONG_VERSION_NUMBER" in detail:
        return " (plaintext server? drop --tls-ca)"
    if "Socket closed" not in detail:
        return ""
    return " (mutual TLS? set --tls-cert/--tls-key)" if not settings.tls_cert else " (certificate refused?)"


async def _health(address: str, settings: Settings) -> str:
    channel = (grpc.aio.secure_channel(address, _tls.channel_credentials(settings.tls_ca, settings.tls_cert,
                                                                         settings.tls_key))
               if settings.client_tls else grpc.aio.insecure_channel(address))
    async with channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name + _health_hint(exc.details() or "", settings)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _age(started_at: float) -> str:
    seconds = max(0, int(time.time() - started_at))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _table(headers: list[str], rows: list[list[object]]) -> str:
    """Rows under headers, in columns; every cell printable (a record's text never reaches the terminal raw)."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def cmd_servers(args: argparse.Namespace) -> int:
    url = _registry_url(args)
    settings = _settings(args, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)

    async def gather() -> list[tuple[dict, ServerRecord, str]]:
        """(the record as stored, typed, its health) of each server, by address."""
        records, unverified = await _read_records(url, keys.servers_prefix(args.namespace), settings,
                                                  args.namespace)
        _check_token("servers", records, unverified, "server", args.namespace)
        typed = [ServerRecord.from_dict(r) for r in records]
        healths = await asyncio.gather(*(_health(s.address, settings) for s in typed))
        return sorted(zip(records, typed, healths), key=lambda found: found[1].address)

    found = asyncio.run(gather())
    if args.json:
        print(json.dumps([{**stored, "health": health} for stored, _, health in found], indent=2, sort_keys=True))
        return 0
    rows = [[s.server_id, s.address, s.capacity, s.agents, s.inflight, health,
             ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or "-", _age(s.started_at)]
            for _, s, health in found]
    print(_table(["ID", "ADDRESS", "CAPACITY", "AGENTS", "INFLIGHT", "HEALTH", "LABELS", "AGE"], rows))
    print(f"{len(found)} server(s) in namespace {args.namespace!r} of {redact_url(url)}")
    return 0


def _selected(record: dict, args: argparse.Namespace) -> bool:
    """Whether an agent record passes the --server, --class and --name filters."""
    cls = record.get("class", "")
    return ((not args.server or record.get("server_id") == args.server)
            and (not args.cls or args.cls in (cls, cls.rpartition(":")[2]))
            and (not args.name or fnmatch.fnmatchcase(record.get("name", ""), args.name)))


def cmd_agents(args: argparse.Namespace) -> int:
    url = _registry_url(args)
    found, unverified = asyncio.run(_read_records(url, keys.agents_prefix(args.namespace), _settings(args),
                                                  args.namespace))
    _check_token("agents", found, unverified, "agent", args.namespace)
    records = sorted((r for r in found if _selected(r, args)),
                     key=lambda r: (r.get("address", ""), r.get("name", "")))
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    rows = [[r.get("agent_id", ""), r.get("name", ""), r.get("class", ""), r.get("server_id", ""),
             r.get("address", "")] for r in records]
    print(_table(["ID", "NAME", "CLASS", "SERVER", "ADDRESS"], rows))
    shown = f"{len(records)} of {len(found)}" if len(records) != len(found) else f"{len(records)}"
    print(f"{shown} agent(s) in namespace {args.namespace!r} of {redact_url(url)}")
    return 0


def cmd_prometheus_targets(args: argparse.Namespace) -> int:
    """Write the metrics endpoints of the registry's servers as a Prometheus file_sd target file."""
    url, settings = _registry_url(args), _settings(args)
    if not settings.token:
        raise SystemExit("agentmesh prometheus-targets: needs the namespace token (AGENTMESH_TOKEN_FILE or "
                         "AGENTMESH_TOKEN) to verify the servers' records")
    view = ServerView(url, args.namespace, settings.registry_timeout, settings.etcd_options(),
                      key=_trust.namespace_key(settings.token, args.namespace))

    async def run() -> int:
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, done.set)
        try:
            return await write_from_registry(view, args.output, args.watch, args.interval, done)
        finally:
            await view.close()
    try:
        count = asyncio.run(run())
    except EtcdError as exc:
        raise SystemExit(f"agentmesh prometheus-targets: registry {redact_url(url)}: {exc}") from None
    print(f"{count} metrics target(s) written to {args.output}")
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
