"""RpcClient: AgentScope's client of one agent server, over agentmesh's authenticated (and TLS-capable) sessions."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from .. import _codec, _status, errors
from .._address import format_address
from .._client import files
from .._client.connection import Connection
from .._client.slot import CallSlot, raised
from .._runtime import Runtime, default_runtime
from ..v1 import agent_server_pb2 as pb
from .._ids import new_id

log = logging.getLogger("agentmesh")


class RpcClient:
    """Manage one agent server: its agents, its state, its files (AgentScope's ``agentscope.rpc.RpcClient``).

    It speaks through this process's runtime, so the server and this process
    authenticate each other as for any call (token, TLS). Methods that only
    ask (``is_alive``, ``get_server_info``) answer False or ``{}`` when the
    server cannot be reached, as AgentScope's do; the others raise a clear error.
    """

    def __init__(self, host: str, port: int, runtime: Runtime | None = None) -> None:
        self.host = host
        self.port = int(port)
        self.url = format_address(host, self.port)
        self._runtime = runtime

    @property
    def runtime(self) -> Runtime:
        return self._runtime or default_runtime()

    def _session(self, timeout: float | None = None) -> Connection:
        return self.runtime.pool.connect(self.url, timeout)

    def _rpc(self, method: str, request: Any, timeout: float | None = 30.0, conn: Connection | None = None) -> Any:
        conn = conn or self._session()
        try:   # on the I/O loop, where the channel lives
            return self.runtime.run(conn.unary(method, request, timeout=timeout))
        except (asyncio.CancelledError, concurrent.futures.CancelledError):   # the session closed under it
            raise errors.ServerUnavailableError(f"the session with agent server {self.url} closed during "
                                                f"{method}; try again") from None

    # -- the server --------------------------------------------------------------
    def is_alive(self) -> bool:
        """True when the server answers and is serving (not draining)."""
        try:
            conn = self._session(timeout=5.0)
            return self._rpc("GetInfo", pb.InfoRequest(), timeout=5.0, conn=conn).status == "SERVING"
        except (errors.AgentMeshError, OSError, TimeoutError) as exc:
            log.debug("agent server %s is not alive: %s", self.url, exc)
            return False

    def stop(self) -> bool:
        """Stop the server (a deliberate shutdown: it drains, then exits); True once it has agreed."""
        self._rpc("StopServer", pb.StopRequest())
        log.info("agent server %s asked to stop", self.url)
        return True

    def get_server_info(self) -> dict[str, Any]:
        """What the server is and uses: ``id``, ``pid``, ``cpu`` (%), ``mem`` (MiB) and more; {} if unreachable."""
        try:
            info = self._rpc("GetInfo", pb.InfoRequest(), timeout=5.0)
        except (errors.AgentMeshError, OSError, TimeoutError) as exc:
            log.warning("get_server_info: agent server %s cannot be reached: %s", self.url, exc)
            return {}
        return {"id": info.server_id, "pid": info.pid, "cpu": round(info.cpu_percent, 1),
                "mem": round(info.memory_mib, 1), "host": info.host, "port": info.port, "capacity": info.capacity,
                "agents": info.agents, "inflight": info.inflight, "status": info.status, "version": info.version,
                "python": info.python, "uptime": round(info.uptime, 1), "classes": list(info.classes),
                "file_dir": info.file_dir}

    # -- its agents ----------------------------------------------------------------
    def create_agent(self, agent_configs: dict, agent_id: str | None = None) -> bool:
        """Create an agent from AgentScope's configs: ``class_name`` (a class the server hosts, by name), ``args``,
        ``kwargs``. True once it is built; AgentCreationError (or CapacityError) saying why not."""
        if not isinstance(agent_configs, dict) or not agent_configs.get("class_name"):
            raise ValueError(f"agent_configs needs a 'class_name' (a class the server hosts), got {agent_configs!r}")
        args, kwargs = tuple(agent_configs.get("args", ())), dict(agent_configs.get("kwargs", {}))
        request = pb.CreateAgentRequest(agent_id=agent_id or new_id(),
                                        cls=pb.ClassRef(name=str(agent_configs["class_name"])),
                                        init_args=_codec.dumps((args, kwargs)))
        self._rpc("CreateAgent", request, timeout=None)
        return True

    def delete_agent(self, agent_id: str) -> bool:
        """Delete one agent (its state is dropped); False when the server has no such agent."""
        return self._rpc("DeleteAgent", pb.DeleteAgentRequest(agent_id=agent_id)).deleted

    def delete_all_agent(self) -> bool:
        """Delete every agent on the server."""
        self._rpc("DeleteAllAgents", pb.DeleteAllAgentsRequest())
        return True

    def get_agent_list(self) -> list[dict[str, Any]]:
        """One dict per hosted agent: ``agent_id``, ``name``, ``type`` (class name), ``class``, ``calls``, ``queued``."""
        return [{"agent_id": a.agent_id, "name": a.name, "type": a.type, "class": a.cls, "calls": a.seq,
                 "queued": a.queued, "checkpoint": a.checkpoints_on}
                for a in self._rpc("ListAgents", pb.ListAgentsRequest()).agents]

    def get_agent_memory(self, agent_id: str) -> list[Any]:
        """The agent's memory as plain dicts (messages' ``to_dict()``), oldest first, read after its earlier calls."""
        memory = self._call(agent_id, "__getattr__", (("memory",), {}), timeout=60.0)
        if memory is None:
            raise errors.AgentCallError(f"agent {agent_id} on {self.url} has no memory", agent_id=agent_id,
                                        method="get_agent_memory")
        messages = memory.get_memory() if hasattr(memory, "get_memory") else list(memory)
        return [m.to_dict() if hasattr(m, "to_dict") else m for m in messages]

    def call_agent_func(self, func_name: str, agent_id: str, value: bytes | None = None,
                        timeout: float = 300) -> bytes:
        """Call func_name on the agent and wait; the pickled result. value: AgentScope's pickle of
        ``{"args": ..., "kwargs": ...}``. Unlike AgentScope, an async method's result is waited for too."""
        spec = _codec.loads(value) if value else {}
        if not isinstance(spec, dict):
            raise ValueError(f"call_agent_func: value must pickle a dict with 'args' and 'kwargs', "
                             f"not {type(spec).__name__}")
        reply = self._send(agent_id, func_name, (tuple(spec.get("args", ())), dict(spec.get("kwargs", {}))),
                           timeout).reply
        if reply.status != pb.OK:
            raise _status.reply_error(reply, agent_id, func_name)
        return reply.payload

    # -- its files -----------------------------------------------------------------
    def download_file(self, path: str) -> str:
        """Copy a file from the server's file root (``file_dir``) here; the local path. FileNotFoundError saying
        why for a path outside the root, a missing file, or a server without a root."""
        runtime = self.runtime
        conn = self._session()
        return runtime.run(files.download(conn, path, runtime.downloads.folder(runtime.settings.download_dir)))

    # -- calls on the session ----------------------------------------------------
    def _send(self, agent_id: str, method: str, args: tuple[tuple, dict], timeout: float | None) -> CallSlot:
        conn = self._session()
        slot = CallSlot(pb.Call(call_id=self.runtime.next_call_id(), agent_id=agent_id, method=method),
                        payload=(_codec.dumps(args),) if args != ((), {}) else ())
        conn.submit(slot)
        slot.wait(timeout)
        return slot

    def _call(self, agent_id: str, method: str, args: tuple[tuple, dict], timeout: float | None) -> Any:
        value = self._send(agent_id, method, args, timeout).value()
        error = raised(value)
        if error is not None:
            raise error
        return value

    def __reduce__(self) -> tuple:
        return (RpcClient, (self.host, self.port))

    def __repr__(self) -> str:
        return f"RpcClient({self.host!r}, {self.port})"
