"""The process's watch-backed view of the servers in one namespace.

One per process and namespace: a prefix read, then a watch that keeps the
map current, so a warm placement needs no etcd round trip.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from typing import Any, Awaitable, Callable, Iterator

from .. import _protocol
from .._trust import BadRecord
from ..etcd import EtcdAuthError, EtcdClient, EtcdError, redact_url
from . import keys
from .records import RecordWarnings, ServerRecord, agent_record, server_record, staleness

log = logging.getLogger("agentmesh.discovery")

#: how long our own placements count on top of a server's record
_PLACED_MEMORY = 1.0


class ServerView:
    """Server records of a namespace, kept current by a watch (lives on the I/O loop).

    Only records that verify with the namespace key under the lease they are
    attached to, match the schema and are fresh count (records.py); anything
    else in etcd is ignored, logged once per key.
    """

    def __init__(self, url: str, namespace: str, timeout: float = 2.0, etcd_options: dict[str, Any] | None = None,
                 on_server_gone: Callable[[str], Awaitable[None]] | None = None, key: bytes | None = None) -> None:
        if key is None:
            raise ValueError(f"registry {redact_url(url)}: reading it needs the namespace token (token=, "
                             f"AGENTMESH_TOKEN_FILE or AGENTMESH_TOKEN), which verifies its records")
        self.url = url
        self.key = key
        self.warnings = RecordWarnings(url)
        self.namespace = namespace
        self.timeout = timeout
        self.servers: dict[str, ServerRecord] = {}
        self._placed_at: dict[str, float] = {}   # server id: when we last placed an agent there
        #: server id: its agents as we count them (its record's, plus ours not yet in it); a dict, not a new
        #: record per placement, so a placement costs one dict write
        self._agents: dict[str, int] = {}
        self.client = EtcdClient.from_url(url, timeout=timeout, **(etcd_options or {}))
        self._on_server_gone = on_server_gone
        self.ready = False
        self.failed_at = 0.0
        self._task: asyncio.Task | None = None
        self._starting: asyncio.Future | None = None
        self._watch = None

    async def ensure_started(self) -> None:
        """Read the servers once and start watching; raises EtcdError within the timeout."""
        if self.ready:
            return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        starting = self._starting
        try:
            await asyncio.wait_for(asyncio.shield(starting), self.timeout)
        except (asyncio.TimeoutError, EtcdError) as exc:
            if self._starting is starting:
                self._starting = None
                starting.cancel()
            self.failed_at = time.monotonic()
            raise EtcdError(f"registry {redact_url(self.url)} unreachable: {exc or 'timed out'}") from None

    async def _start(self) -> None:
        prefix = keys.servers_prefix(self.namespace)
        kvs, revision = await self.client.get_prefix(prefix)
        self.servers = {}
        for kv in kvs:
            self._put(kv.key.decode("utf-8", "surrogateescape"), kv.value, kv.lease)
        self._watch = self.client.watch_prefix(prefix, start_revision=revision + 1)
        await self._watch.start()
        self._task = asyncio.ensure_future(self._follow())
        self.ready = True

    def _put(self, key: str, value: bytes, lease: int) -> None:
        server_id = key.rsplit("/", 1)[-1]
        try:
            record = ServerRecord.from_dict(server_record(self.key, key, value, lease))
        except BadRecord as exc:
            self.warnings.skip(key, str(exc))
            self._gone(server_id)
            return
        self.warnings.good(key)
        counted = self._agents.get(server_id)
        if counted is not None and time.monotonic() - self._placed_at.get(server_id, 0.0) < _PLACED_MEMORY:
            # our own recent placements may not be in the server's record yet (it writes every 0.2 s)
            self._agents[server_id] = max(record.agents, counted)
        else:
            self._agents[server_id] = record.agents
        self.servers[server_id] = record

    async def _follow(self) -> None:
        try:
            async for event in self._watch:
                if event.type == "RESYNC":
                    self.servers, self._placed_at, self._agents = {}, {}, {}
                    for snap in event.snapshot:
                        self._put(snap.key, snap.value, snap.lease)
                elif event.type == "PUT":
                    self._put(event.key, event.value, event.lease)
                elif event.type == "DELETE":
                    self._gone(event.key.rsplit("/", 1)[-1])
        except asyncio.CancelledError:
            return
        except EtcdError as exc:
            log.warning("registry %s: watch ended (%s); the next placement reads again", redact_url(self.url), exc)
        self.ready = False
        self._starting = None

    def _gone(self, server_id: str) -> None:
        self._placed_at.pop(server_id, None)
        self._agents.pop(server_id, None)
        if self.servers.pop(server_id, None) is not None and self._on_server_gone is not None:
            asyncio.ensure_future(self._on_server_gone(server_id))

    def _fitting(self, labels: dict[str, str] | None, cls_name: str | None,
                 exclude: set[str] | frozenset, store: str = "") -> Iterator[tuple[int, ServerRecord]]:
        """(free room, record) of each fresh server that serves, fits and has room, and is not excluded (by id
        or address); the room counts the agents we placed there that its record does not show yet."""
        agents = self._agents
        for record in self.current():
            if record.status != "SERVING" or (exclude and (record.server_id in exclude or record.address in exclude)):
                continue
            if record.python != _protocol.PYTHON_VERSION or not record.fits(labels, cls_name, store):
                continue
            free = record.capacity - agents.get(record.server_id, record.agents)
            if free > 0:
                yield free, record

    def current(self) -> list[ServerRecord]:
        """The servers' records that are still fresh (a server rewrites its record every few seconds)."""
        now = time.time()
        fresh = []
        for record in list(self.servers.values()):
            stale = staleness(record.signed_at, now)
            if stale:
                self.warnings.skip(keys.server_key(self.namespace, record.server_id), stale)
            else:
                fresh.append(record)
        return fresh

    def candidates(self, labels: dict[str, str] | None = None, cls_name: str | None = None,
                   exclude: set[str] | frozenset = frozenset(), store: str = "") -> list[ServerRecord]:
        """Servers that fit, with room, most free capacity first (ties at random); exclude: ids or addresses;
        store: only servers with that state store (a durable agent's)."""
        fits = [(free, random.random(), record) for free, record in self._fitting(labels, cls_name, exclude, store)]
        fits.sort(key=lambda f: (-f[0], f[1]))
        return [record if record.capacity - free == record.agents
                else dataclasses.replace(record, agents=record.capacity - free) for free, _, record in fits]

    def best(self, labels: dict[str, str] | None = None, cls_name: str | None = None,
             store: str = "") -> ServerRecord | None:
        """The first of candidates() in one pass, without sorting (a placement per to_dist() asks this)."""
        best, most, ties = None, 0, 0
        for free, record in self._fitting(labels, cls_name, frozenset(), store):
            if free > most:
                best, most, ties = record, free, 1
            elif free == most:
                ties += 1
                if random.random() * ties < 1:   # each of the tied servers equally likely
                    best = record
        return best

    def placed(self, server_id: str) -> None:
        """Count an agent we just placed before the server's own update arrives."""
        record = self.servers.get(server_id)
        if record is not None:
            self._agents[server_id] = self._agents.get(server_id, record.agents) + 1
            self._placed_at[server_id] = time.monotonic()

    def full(self, server_id: str) -> None:
        """The server refused for lack of room: treat it as full until it says otherwise."""
        record = self.servers.get(server_id)
        if record is not None:
            self._agents[server_id] = record.capacity

    async def locate(self, agent_id: str, avoid: str = "", timeout: float = 10.0,
                     avoid_server: str = "") -> tuple[str, str] | None:
        """(server_id, address) of agent_id per its signed record, waiting up to timeout for one that names
        neither the address avoid nor the server avoid_server (the one lost, however its address was spelt).

        EtcdError when the registry could not be read: at once if it refuses our credentials, else at the
        deadline if the last read failed (an unreadable registry is not "no record").
        """
        deadline = time.monotonic() + timeout
        path = keys.agent_key(self.namespace, agent_id)
        while True:
            try:
                kv, failed = await self.client.get(path), None
            except EtcdAuthError as exc:
                raise EtcdAuthError(f"registry {redact_url(self.url)} refused to be read: {exc}", exc.code) from None
            except EtcdError as exc:
                kv, failed = None, exc
            record = None
            if kv is not None:
                try:
                    record = agent_record(self.key, path, kv.value, kv.lease)
                except BadRecord as exc:
                    self.warnings.skip(path, str(exc))
            if record is not None and record["address"] != avoid and record["server_id"] != avoid_server:
                return record["server_id"], record["address"]
            if time.monotonic() >= deadline:
                if failed is not None:
                    raise EtcdError(f"registry {redact_url(self.url)} could not be read: {failed}", failed.code)
                return None
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._watch is not None:
            await self._watch.aclose()
        await self.client.close()
