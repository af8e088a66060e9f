"""A server's registration in etcd: its record and its agents' records, under a lease.

The record holds address, capacity and live load; it is rewritten when the
load changes (at most every ``min_interval`` s), signed again at least every
``records.REFRESH_EVERY`` s when nothing changes (readers ignore stale ones),
written back at once when someone else overwrites or deletes it, and it
vanishes with the lease when the server stops renewing it. Every record is
bound to the lease it is written under. A lost lease (etcd outage, a long
pause) is replaced by a new one and everything is written again under the
same keys: no duplicate, and the old keys die with the old lease, so no ghost.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
from typing import Any, Mapping, Protocol

from .. import _protocol, _trust
from .._address import advertised_host
from .._config import ServerConfig
from .._version import __version__
from ..etcd import EtcdAuthDisabled, EtcdAuthError, EtcdClient, EtcdError, Lease, Watch, parse_registry_url, redact_url
from ..store import store_identity
from . import keys
from .records import REFRESH_EVERY, agent_record, check_labels, printable

log = logging.getLogger("agentmesh.discovery")

#: agent records signed and written at once, between which the I/O loop runs (lease renewals, calls)
WRITE_SLICE = 500
#: how long a stopping server waits for its registration task to wind down before it revokes its lease
STOP_WAIT = 1.0


class ServerLoad(Protocol):
    """What registration reads live of the server it registers: its agents and its load."""

    inflight: int
    epoch: int
    draining: bool

    @property
    def agents(self) -> Mapping[str, Any]:
        """The hosted agents by id (each with ``.agent`` and ``.cls_name``)."""

    def fence(self, why: str, agent_ids: list[str]) -> int:
        """Drop agents that moved while the server was cut off (only those); how many were here."""


class Registration:
    """Keeps a server's record and its agents' records in etcd while it serves.

    config says where and what it registers; load is read live; port and
    metrics_port are where the server serves (metrics_port None: no /metrics).
    """

    def __init__(self, config: ServerConfig, load: ServerLoad, *, port: int, metrics_port: int | None,
                 class_names: list[str], started_at: float, key: bytes | None,
                 etcd_options: dict[str, Any] | None = None, min_interval: float = 0.2) -> None:
        if key is None:
            raise ValueError("registration needs the namespace key: records are signed with it")
        if not config.registry:
            raise ValueError(f"agent server {config.server_id} has no registry to register in")
        self.config = config
        self.load = load
        self.server_id = config.server_id
        self.port = port
        self.metrics_port = metrics_port
        self.class_names = list(class_names)
        self.started_at = started_at
        self.signing_key = key
        self.url = url = config.registry
        self.namespace = config.namespace
        self.labels = check_labels(config.labels)
        #: its state store's identity, published so durable agents are placed only where their rows are
        self.store = store_identity(config.state_store)
        self.ttl = config.registry_ttl
        self.min_interval = min_interval
        self.host = config.advertise_host or advertised_host(config.bind_host)
        self.key = keys.server_key(self.namespace, self.server_id)
        self.client = EtcdClient.from_url(url, **(etcd_options or {}))
        parsed = parse_registry_url(url)
        self._user = parsed["user"] or ""
        self._password_given = bool(parsed["password"] or (etcd_options or {}).get("password"))
        self.lease: Lease | None = None
        self.registered = asyncio.Event()
        self._dirty = asyncio.Event()
        self._agents_changed: dict[str, dict | None] = {}
        #: agents whose record we have not written yet -> the store revision we knew when they came: a record
        #: of another server no newer than that predates our copy (its old home's, say), so it moves nothing
        self._unwritten: dict[str, int] = {}
        self.revision = 0             # the newest store revision etcd told us
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._lost = asyncio.Event()
        self._auth_problem = ""
        self._written: collections.deque[bytes] = collections.deque(maxlen=8)   # our latest server records
        self._overwritten = False     # someone else wrote or deleted our record (warned once per lease)
        self._signed_at = 0.0         # when we last wrote our record (monotonic)
        #: registry errors by operation, and the renewals of leases given up (for metrics)
        self.errors: dict[str, int] = {}
        self._past_renewals = [0, 0]

    # -- what the server tells us --------------------------------------------
    def load_changed(self) -> None:
        """The server's load changed (I/O loop); written within min_interval."""
        if not self._dirty.is_set():
            self._dirty.set()

    def agent_added(self, agent_id: str, name: str, cls_name: str) -> None:
        self._agents_changed[agent_id] = {"agent_id": agent_id, "name": name, "class": cls_name,
                                          "server_id": self.server_id, "address": f"{self.host}:{self.port}"}
        self._unwritten[agent_id] = self.revision
        self.load_changed()

    def agent_removed(self, agent_id: str) -> None:
        self._agents_changed[agent_id] = None
        self._unwritten.pop(agent_id, None)
        self.load_changed()

    def live_metrics(self) -> dict:
        """Registry errors and lease renewals, as metrics sources report them."""
        lease = self.lease
        ok = self._past_renewals[0] + (lease.renewals if lease else 0)
        failed = self._past_renewals[1] + (lease.renewal_failures if lease else 0)
        return {
            "agentmesh_registry_errors": ("Registry (etcd) operations of this server that failed, by operation",
                                          "counter", [({"operation": op}, float(n)) for op, n in self.errors.items()]
                                          or [({"operation": "register"}, 0.0)]),
            "agentmesh_lease_renewals": ("Keepalives of this server's registry lease, by result", "counter",
                                         [({"result": "ok"}, float(ok)), ({"result": "failed"}, float(failed))]),
            "agentmesh_registered": ("1 while this server's registry record is current", "gauge",
                                     [({}, 1.0 if self.registered.is_set() else 0.0)]),
        }

    # -- the record ------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        load, metrics = self.load, self.metrics_port
        return {
            "server_id": self.server_id, "host": self.host, "port": self.port,
            "address": f"{self.host}:{self.port}", "capacity": self.config.capacity, "agents": len(load.agents),
            "inflight": load.inflight, "labels": self.labels, "pid": os.getpid(),
            "hostname": socket.gethostname(), "started_at": self.started_at, "version": __version__,
            "python": _protocol.PYTHON_VERSION, "classes": list(self.class_names),
            "ship_classes": self.config.allow_shipped_classes, "epoch": load.epoch,
            "status": "DRAINING" if load.draining else "SERVING", "updated_at": time.time(),
            **({"metrics": f"{self.host}:{metrics}"} if metrics else {}),
            **({"store": self.store} if self.store else {}),
        }

    async def start(self, wait: float | None = None) -> None:
        """Register in the background; with wait, wait up to that long for the first registration."""
        self._task = asyncio.ensure_future(self._run())
        if wait:
            registered = asyncio.ensure_future(self.registered.wait())
            try:
                await asyncio.wait((registered,), timeout=wait)
            finally:
                registered.cancel()      # never left pending (an unregistered server would leak it at exit)
            if not self.registered.is_set() and not self._auth_problem:   # a refusal was logged, as an ERROR
                log.warning("server %s: registry %s not reachable yet; will keep trying", self.server_id,
                            redact_url(self.url))

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                await self._register()
                backoff = 0.1
                await self._update_until_lost()
            except EtcdAuthError as exc:     # a configuration mistake: loud, once per distinct reason
                self.errors["auth"] = self.errors.get("auth", 0) + 1
                if str(exc) != self._auth_problem:
                    self._auth_problem = str(exc)
                    log.error("server %s: registry %s refused authentication (%s)%s; not registered, retrying",
                              self.server_id, redact_url(self.url), exc, self._auth_advice(exc))
            except (EtcdError, OSError) as exc:
                operation = "update" if self.registered.is_set() else "register"
                self.errors[operation] = self.errors.get(operation, 0) + 1
                log.info("server %s: registry %s unavailable (%s); retrying", self.server_id,
                         redact_url(self.url), exc)
            except asyncio.CancelledError:
                return
            except Exception:  # noqa: BLE001 - registering must go on whatever failed; say what it was
                self.errors["register"] = self.errors.get("register", 0) + 1
                log.warning("server %s: registering in %s failed unexpectedly; retrying", self.server_id,
                            redact_url(self.url), exc_info=True)
            self.registered.clear()
            if self._stopping:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    def _auth_advice(self, exc: EtcdAuthError) -> str:
        """What is most likely wrong with our credentials, for the message of a refusal ("" when not known)."""
        if isinstance(exc, EtcdAuthDisabled):
            return ""
        if not self._user:
            return (": it requires a user, and none was given: name it in the registry URL (etcd://USER@host:port) "
                    "and give its password in a file (AGENTMESH_ETCD_PASSWORD_FILE or --etcd-password-file)")
        if not self._password_given:
            return (f": no password was given for user {self._user!r} (the password file is missing: set "
                    f"AGENTMESH_ETCD_PASSWORD_FILE or --etcd-password-file)")
        return f": the password of user {self._user!r} is wrong, or the user lacks a role on the namespace's keys"

    async def _register(self) -> None:
        """A new lease, then the server record and every agent record under it."""
        self._lost.clear()
        again = self.lease is not None
        if again:      # the old lease (lost, or fenced): stop it, its keys go with it
            old, self.lease = self.lease, None
            self._past_renewals[0] += old.renewals
            self._past_renewals[1] += old.renewal_failures
            try:
                await old.revoke()
            except EtcdError:
                await old.stop()
            await self.drop_moved("it was cut off from the registry")
        self.lease = await self.client.lease(self.ttl, on_lost=self._lost.set)
        self._written.clear()
        self._overwritten = False
        agents = {aid: {"agent_id": aid, "name": getattr(h.agent, "name", "") or "", "class": h.cls_name,
                        "server_id": self.server_id, "address": f"{self.host}:{self.port}"}
                  for aid, h in self.load.agents.items()}
        self._agents_changed.clear()
        await self._write(agents)
        self.registered.set()
        log.info("server %s registered in %s as %s (lease %x, ttl %d s)",
                 self.server_id, redact_url(self.url), self.key, self.lease.id, self.ttl)

    async def drop_moved(self, why: str) -> int:
        """Agents whose records now name another server were moved while we were cut off or stopped: drop
        them (only them), so calls aimed at our old copies are refused; how many."""
        kvs, revision = await self.client.get_prefix(keys.agents_prefix(self.namespace))
        self.revision = max(self.revision, revision)
        unwritten = self._unwritten
        elsewhere = set()
        for kv in kvs:
            try:
                record = agent_record(self.signing_key, kv.key.decode("utf-8", "surrogateescape"), kv.value,
                                      kv.lease)
            except _trust.BadRecord:
                continue      # unsigned, forged, replayed, lease-less or malformed: it moves nothing
            agent_id = record["agent_id"]
            if record["server_id"] != self.server_id and kv.mod_revision > unwritten.get(agent_id, -1):
                elsewhere.add(agent_id)   # written after our copy came: its owner moved it
        moved = [aid for aid in self.load.agents if aid in elsewhere]
        return self.load.fence(f"{why}, their registry records named another server", moved) if moved else 0

    async def _write(self, agents: dict[str, dict | None]) -> None:
        """Write our record and those of agents (None: delete it), signed WRITE_SLICE at a time: a server of
        250,000 agents registering again signs for ~2 s, and its lease must be renewed meanwhile."""
        lease_id = self.lease.id if self.lease else 0
        sign = self.signing_key
        own = _trust.sign_record(sign, self.key, self.record(), lease_id)
        self._written.append(own)
        puts: list[tuple[str, bytes, int]] = [(self.key, own, lease_id)]
        items = list(agents.items())
        for start in range(0, max(1, len(items)), WRITE_SLICE):
            deletes = []
            for agent_id, rec in items[start:start + WRITE_SLICE]:
                path = keys.agent_key(self.namespace, agent_id)
                if rec is None:
                    deletes.append(path)
                else:
                    puts.append((path, _trust.sign_record(sign, path, rec, lease_id), lease_id))
            self.revision = max(self.revision, await self.client.put_many(puts, deletes))
            puts = []
        self._signed_at = time.monotonic()
        for agent_id in agents:
            self._unwritten.pop(agent_id, None)

    async def _update_until_lost(self) -> None:
        """Write the record when the load changes, when REFRESH_EVERY s passed, or when someone else wrote it."""
        lost = asyncio.ensure_future(self._lost.wait())
        watch = self.client.watch_prefix(self.key)
        guard: asyncio.Future | None = None
        try:
            await watch.start()
            guard = asyncio.ensure_future(self._guard(watch))
            current = await self.client.get(self.key)      # written over before the watch began?
            if current is None or current.value not in self._written:
                self._written_by_someone_else("overwritten or deleted")
            while not self._stopping:
                dirty = asyncio.ensure_future(self._dirty.wait())
                try:
                    await asyncio.wait((dirty, lost, guard), return_when=asyncio.FIRST_COMPLETED,
                                       timeout=max(0.0, self._signed_at + REFRESH_EVERY - time.monotonic()))
                finally:
                    dirty.cancel()
                if lost.done():
                    log.warning("server %s: registry lease lost; registering again", self.server_id)
                    return
                if guard.done():
                    guard.result()
                    raise EtcdError("the watch on this server's own record ended")
                self._dirty.clear()
                changed, self._agents_changed = self._agents_changed, {}
                try:
                    await self._write(changed)
                except EtcdError:
                    for aid, rec in changed.items():   # keep them for the next try
                        self._agents_changed.setdefault(aid, rec)
                    self._dirty.set()
                    raise
                await asyncio.sleep(self.min_interval)
        finally:
            lost.cancel()
            if guard is not None:
                guard.cancel()
                await asyncio.gather(guard, return_exceptions=True)
            await watch.aclose()

    async def _guard(self, watch: Watch) -> None:
        """Follow our own key: a value we did not write under our lease, or a deletion, is written over at once."""
        async for event in watch:
            if event.type == "RESYNC":      # history was compacted: write ours once more, to be sure
                self._dirty.set()
                continue
            if event.key != self.key:
                continue      # a longer server id sharing our key as its prefix
            lease = self.lease.id if self.lease else 0
            if event.type == "PUT" and event.lease == lease and event.value in self._written:
                continue
            self._written_by_someone_else("deleted" if event.type == "DELETE" else "overwritten")

    def _written_by_someone_else(self, how: str) -> None:
        if not self._overwritten:     # once per lease: an attacker rewriting it in a loop gets one line
            self._overwritten = True
            log.warning("server %s: its registry record %s was %s by another writer; writing it back",
                        self.server_id, printable(self.key), how)
        self._dirty.set()

    async def stop(self) -> None:
        """Withdraw at once: revoking the lease deletes the server's and its agents' records."""
        self._stopping = True
        if self._task is not None:   # its clean-up (closing the watch on our key) may wait on etcd: not for long
            self._task.cancel()
            await asyncio.wait((self._task,), timeout=STOP_WAIT)
        if self.lease is not None:
            try:
                await self.lease.revoke()
            except EtcdError as exc:
                log.info("server %s: could not revoke its lease (%s); the key expires in %d s",
                         self.server_id, exc, self.ttl)
        await self.client.close()
