"""The sessions of one runtime, one per server address, and fetching results made by others."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

import grpc

from .. import _status, errors
from .._loop import IoLoop
from ..v1 import agent_server_pb2 as pb
from .connection import Connection
from .dialing import Dialing
from .handshake import ServerMismatchError
from .slot import ResultRef

log = logging.getLogger("agentmesh.rpc")

#: where an agent lives now, per the registry (agent_id, address to avoid) -> (server_id, address) or None
Locator = Callable[[str, str], Awaitable["tuple[str, str] | None"]]
#: agents deleted per request when a process shuts down (36 bytes an id: well under any message limit)
DELETE_BATCH = 10_000
#: how long the owner of agents moved off a lost server keeps trying to tell it so (s)
TELL_MOVED_FOR = 60.0


class LocalServer(Protocol):
    """An agent server in this process: its results are fetched without the network."""

    async def fetch_result(self, call_id: str, agent_id: str = "", trace: Any = None) -> pb.Reply:
        """The reply of call_id, waiting while the call runs (traced as a child of trace's context)."""


class Pool:
    """Open sessions by address; opening one is shared by everyone who asks at the same time."""

    def __init__(self, loop: IoLoop, dialing: Dialing) -> None:
        self.loop = loop
        self.dialing = dialing
        #: how a fetch finds an agent that moved; set when the runtime has a registry
        self.locator: Locator | None = None
        #: server_id -> an in-process server, so its placeholders skip the network
        self.local_servers: dict[str, LocalServer] = {}
        self._open: dict[str, Connection] = {}
        self._connecting: dict[str, asyncio.Future] = {}
        #: this process's metrics (None: off); sessions opened from now on record into it
        self.metrics: Any = None

    def open_sessions(self) -> list[Connection]:
        """The sessions open now."""
        return [conn for conn in list(self._open.values()) if not conn.closed]

    def sessions(self) -> int:
        """How many sessions are open."""
        return len(self.open_sessions())

    def discard(self, conn: Connection) -> None:
        """Forget a session that ended."""
        if self._open.get(conn.address) is conn:
            del self._open[conn.address]

    async def get(self, address: str, timeout: float | None = None, expect: str = "",
                  namespace: str | None = None) -> Connection:
        """The open session to address, opening one if needed (on the I/O loop).

        expect: the server id the caller chose (from a registry record or an
        earlier session); a server at address that cannot prove it is that one
        is refused before anything is sent to it.
        """
        conn = self._open.get(address)
        if conn is None or conn.closed:
            waiting = self._connecting.get(address)
            conn = await asyncio.shield(waiting) if waiting is not None else await self._dial(address, timeout,
                                                                                               expect, namespace)
        if expect and conn.server_id != expect:
            raise ServerMismatchError(f"the agent server at {address} is {conn.server_id}, not {expect} "
                                      f"(the server chosen is gone)")
        return conn

    def record_into(self, metrics: Any) -> None:
        """Metrics were turned on: the open sessions and those opened from now on record calls into them."""
        self.metrics = metrics
        for conn in self.open_sessions():
            conn.metrics = metrics

    def add_local(self, server_id: str, server: LocalServer) -> None:
        """A server started in this process: results it holds are fetched from it without the network."""
        self.local_servers[server_id] = server

    def remove_local(self, server_id: str) -> None:
        """That server stopped."""
        self.local_servers.pop(server_id, None)

    async def _dial(self, address: str, timeout: float | None, expect: str, namespace: str | None) -> Connection:
        fut = asyncio.get_running_loop().create_future()
        self._connecting[address] = fut
        try:
            conn = Connection(address, self.loop, self.dialing, self.discard, namespace, expect)
            conn.metrics = self.metrics
            await conn.open(timeout if timeout is not None else self.dialing.connect_timeout)
            self._open[address] = conn
            fut.set_result(conn)
            return conn
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            self._connecting.pop(address, None)

    def session_of(self, address: str) -> Connection | None:
        """The open session to address, if there is one (no dialing)."""
        conn = self._open.get(address)
        return conn if conn is not None and not conn.closed else None

    def connect(self, address: str, timeout: float | None = None, expect: str = "") -> Connection:
        """get() from a user thread."""
        conn = self._open.get(address)
        if conn is not None and not conn.closed and (not expect or conn.server_id == expect):
            return conn
        return self.loop.run(self.get(address, timeout, expect))

    async def fetch(self, ref: ResultRef, trace: dict[str, str] | None = None) -> pb.Reply:
        """The reply of a call made by someone else, from the server that produces it.

        If that server is gone, the call's agent has moved (its owner replays the
        call under the same id): follow the agent's registry record there.
        trace is the fetch's trace context (sent as gRPC metadata), when it is traced.
        """
        server_id, address = ref.server_id, ref.address    # where to ask: the agent's server now
        while True:
            reply = await self._fetch_from(server_id, address, ref.agent_id, ref.call_id, trace)
            if reply.status != pb.UNAVAILABLE or self.locator is None:
                return reply
            try:
                moved_to = await self.locator(ref.agent_id, address)
            except errors.RegistryError:    # the registry cannot be read: the refusal stands
                return reply
            if not moved_to:
                return reply
            server_id, address = moved_to

    async def _fetch_from(self, server_id: str, address: str, agent_id: str, call_id: str,
                          trace: dict[str, str] | None = None) -> pb.Reply:
        local = self.local_servers.get(server_id)
        if local is not None:
            return await local.fetch_result(call_id, agent_id, trace.items() if trace else None)
        try:
            conn = await self.get(address, expect=server_id)
        except errors.AgentMeshError as exc:
            return _status.refusal(call_id, pb.UNAVAILABLE, str(exc), type(exc).__name__)
        conn.fetching += 1   # a draining server's session stays open until the value it owes us is here
        try:
            return await conn.unary("FetchResult", pb.FetchRequest(call_id=call_id, agent_id=agent_id),
                                    metadata=tuple(trace.items()) if trace else ())
        except errors.AgentMeshError as exc:
            if exc.status in (pb.EXPIRED, pb.OVERLOADED):   # gone, or too many fetches waiting there: say so
                return _status.refusal(call_id, exc.status, str(exc))
            return _status.refusal(call_id, pb.UNAVAILABLE, f"could not fetch result {call_id}: {exc}")
        finally:
            conn.fetching -= 1
            conn.close_if_unused()

    def tell_moved(self, server_id: str, address: str, agent_ids: list[str]) -> None:
        """Tell the server we lost that we re-created agent_ids elsewhere, if it answers again within
        TELL_MOVED_FOR s (a stop, not a crash), so it drops its old copies (any thread)."""
        self.loop.spawn(self._tell_moved(server_id, address, agent_ids))

    async def _tell_moved(self, server_id: str, address: str, agent_ids: list[str]) -> None:
        deadline, delay = time.monotonic() + TELL_MOVED_FOR, 0.25
        while True:
            conn = self.session_of(address)
            private = conn is None      # nobody talks to it now: a session of its own, closed after, that no
            try:                        # one else can have picked up meanwhile
                if private:
                    fresh = Connection(address, self.loop, self.dialing, expect=server_id)
                    await fresh.open(1.0)      # raises before conn is set: nothing to close
                    conn = fresh
                if conn.server_id != server_id:
                    return   # another server at that address now: the old one is gone for good
                told = 0
                for start in range(0, len(agent_ids), DELETE_BATCH):
                    answer = await conn.unary(
                        "DeleteAgent", pb.DeleteAgentRequest(agent_ids=agent_ids[start:start + DELETE_BATCH],
                                                             moved=True), timeout=5.0)
                    told += answer.count
                log.info("agent server %s answers again: told it that %d agent(s) moved elsewhere (%d were still "
                         "there and are dropped)", address, len(agent_ids), told)
                return
            except ServerMismatchError:
                return
            except (grpc.aio.AioRpcError, errors.AgentMeshError, OSError, asyncio.TimeoutError):
                if time.monotonic() + delay > deadline:
                    return
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
            finally:
                if private and conn is not None and not conn.closed:
                    await conn.close()

    async def server_gone(self, server_id: str) -> None:
        """The registry says server_id's key vanished: if we talk to it and it does not answer, it is lost."""
        for conn in list(self._open.values()):
            if conn.server_id == server_id and not conn.closed and not conn.draining:
                await conn.probe(timeout=0.3)

    async def delete_agents(self, owned: dict[str, str]) -> None:
        """Delete agents (agent_id -> address) on their servers: one request per DELETE_BATCH agents of a
        server, the servers at once, each as far as it goes."""
        by_address: dict[str, list[str]] = {}
        for agent_id, address in owned.items():
            by_address.setdefault(address, []).append(agent_id)

        async def delete(address: str, agent_ids: list[str]) -> None:
            try:
                conn = await self.get(address, timeout=1.0)
                for start in range(0, len(agent_ids), DELETE_BATCH):
                    await conn.unary("DeleteAgent", pb.DeleteAgentRequest(
                        agent_ids=agent_ids[start:start + DELETE_BATCH]), timeout=10.0)
            except errors.AgentMeshError:
                pass

        await asyncio.gather(*(delete(address, ids) for address, ids in by_address.items()))

    async def close(self) -> None:
        """Close every session."""
        for conn in list(self._open.values()):
            await conn.close()
