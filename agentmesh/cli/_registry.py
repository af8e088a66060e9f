"""The commands that read the registry: servers, agents, prometheus-targets; and a dev registry."""
from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
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
from ..store import Row, StoreError, StoreUrlError, open_store, parse_store_url
from ..testing import start_dev_registry
from ._args import _settings, command_error

#: the SERVER of a stored agent that no server hosts now
NOT_ACTIVE = "(stored, not active)"
#: seconds `agentmesh agents` waits for a PostgreSQL state store
STORE_CONNECT_TIMEOUT = 5.0


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
    """Whether an agent (a registry record, with its stored fields when a store is given) passes the --server,
    --class and --name filters; --name matches the agent's name or its stored (durable) name."""
    cls = record.get("class") or ""
    names = [record.get("name") or "", *([record["stored_name"]] if record.get("stored_name") else [])]
    return ((not args.server or record.get("server_id") == args.server)
            and (not args.cls or args.cls in (cls, cls.rpartition(":")[2]))
            and (not args.name or any(fnmatch.fnmatchcase(name, args.name) for name in names)))


def _stored_agents(args: argparse.Namespace) -> tuple[list[Row], str] | None:
    """The namespace's agents in the state store (--state-store, AGENTMESH_STATE_STORE) and the store's URL
    without secret; None when no store is given. A store that cannot be read ends the command with one line
    naming it (its password, from AGENTMESH_STATE_STORE_PASSWORD_FILE only, never shown)."""
    if not args.state_store:
        return None
    try:
        parsed = parse_store_url(args.state_store)
        if parsed.kind == "sqlite" and not os.path.isfile(parsed.path):   # a listing makes no new, empty store
            raise StoreUrlError(f"state store {parsed.shown}: no such file (servers and clients make it on first "
                                f"use: is the path the one they were given?)")
        store = open_store(args.state_store, connect_timeout=STORE_CONNECT_TIMEOUT)
        try:
            return store.list(args.namespace), store.url
        finally:
            store.close()
    except (StoreError, ValueError) as exc:
        raise command_error("agents", " ".join(str(exc).split())) from None


def _with_stored(records: list[dict], rows: list[Row]) -> list[dict]:
    """The registry's records with each one's stored name and lifetime (None: no row), then the stored agents
    that no server hosts now (not active)."""
    by_id = {row.agent_id: row for row in rows}
    live = []
    for record in records:
        row = by_id.get(record.get("agent_id"))
        live.append({**record, "stored_name": row.name if row else None, "lifetime": row.lifetime if row else None,
                     "active": True})
    hosted = {r.get("agent_id") for r in records}
    stored = [{"agent_id": row.agent_id, "name": None, "class": row.cls, "server_id": None, "address": None,
               "stored_name": row.name, "lifetime": row.lifetime, "active": False}
              for row in rows if row.agent_id not in hosted]
    return live + stored


def cmd_agents(args: argparse.Namespace) -> int:
    url = _registry_url(args)
    settings = _settings(args)
    stored = _stored_agents(args)   # first: an agent activated meanwhile shows live rather than "not active"
    found, unverified = asyncio.run(_read_records(url, keys.agents_prefix(args.namespace), settings,
                                                  args.namespace))
    _check_token("agents", found, unverified, "agent", args.namespace)
    every = found if stored is None else _with_stored(found, stored[0])
    records = sorted((r for r in every if _selected(r, args)),
                     key=lambda r: (not r.get("active", True), r.get("address") or "", r.get("name") or "",
                                    r.get("stored_name") or "", r.get("agent_id", "")))
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    shown = f"{len(records)} of {len(every)}" if len(records) != len(every) else f"{len(records)}"
    summary = f"{shown} agent(s) in namespace {args.namespace!r} of {redact_url(url)}"
    if stored is None:
        rows = [[r.get("agent_id", ""), r.get("name", ""), r.get("class", ""), r.get("server_id", ""),
                 r.get("address", "")] for r in records]
        print(_table(["ID", "NAME", "CLASS", "SERVER", "ADDRESS"], rows))
        print(summary)
        return 0
    rows = [[r["agent_id"], r.get("name") or "-", r["stored_name"] or "-", r["lifetime"] or "-", r.get("class", ""),
             r.get("server_id") if r["active"] else NOT_ACTIVE, r.get("address") if r["active"] else "-"]
            for r in records]
    print(_table(["ID", "NAME", "STORED NAME", "LIFETIME", "CLASS", "SERVER", "ADDRESS"], rows))
    live = sum(r["active"] for r in records)
    print(f"{summary}: {live} live, {len(records) - live} stored and not active (state store {stored[1]})")
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
