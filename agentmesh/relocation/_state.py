"""The relocation wing's state in one runtime: the agents it owns, why placement fell back, evacuations, the move log.

It lives in the runtime's extension slot (``runtime.extensions["relocation"]``),
made on first use, so the Runtime holds it without knowing the wing (it sits
below the wing in the layers): it only asks its extensions for their metrics
and closes them when it closes.
"""
from __future__ import annotations

import threading
from typing import Any

from .._checkpoint import CheckpointStore, MemoryCheckpoints
from .._runtime import Runtime
from ._moves import MoveLog


class Relocation:
    """What the wing keeps for one runtime (any thread): owned agents, the fallback reason, evacuations, moves."""

    #: its key in Runtime.extensions
    NAME = "relocation"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        #: agents this process created: agent_id -> address; deleted when the runtime closes
        self.owned: dict[str, str] = {}
        #: why the last placement went to child mode (logged once per reason)
        self.fallback_reason = ""
        #: lost sessions whose agents are being moved together (id of the session -> its evacuation)
        self.evacuations: dict[int, Any] = {}
        self.evacuations_lock = threading.Lock()
        #: the checkpoints of the agents this process created (the seam durable stores plug into)
        self.checkpoints: CheckpointStore = MemoryCheckpoints()
        #: what failover did: one summary per lost server
        self.moves = MoveLog(lambda: runtime.metrics)

    @classmethod
    def of(cls, runtime: Runtime) -> Relocation:
        """runtime's relocation state, made and stored in its extension slot on first use."""
        state = runtime.extensions.get(cls.NAME)
        if state is None:
            state = runtime.extensions.setdefault(cls.NAME, cls(runtime))
        return state

    def live_metrics(self) -> dict[str, Any]:
        """The wing's gauges, read when the runtime's metrics are scraped."""
        return {"agentmesh_owned_agents": ("Agents this process created and owns", "gauge",
                                           [({}, float(len(self.owned)))])}

    async def close(self) -> None:
        """Delete the agents this process created (the runtime is closing; it stays usable). On the I/O loop."""
        owned, self.owned = self.owned, {}
        await self.runtime.pool.delete_agents(owned)
