"""DistConf: AgentScope's distribution settings for an agent, a dict with its keyword arguments."""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("agentmesh.rpc")

__all__ = ["DistConf"]


class DistConf(dict):
    """``Agent(..., to_dist=DistConf(host=..., port=...))``: where and how an agent is distributed.

    With a port, the agent goes to the server at host:port; without one, to
    the server the registry picks, else a child server of this process (where
    AgentScope would start a server of its own). ``max_timeout_seconds``
    bounds one wait for a result; ``max_pool_size``, ``max_expire_time`` and
    ``local_mode`` are kept for AgentScope code and set nothing here: servers
    size their result stores themselves, and child servers listen on loopback.
    Further keyword arguments (``retry_strategy``, ``labels``, ...) are
    ``to_dist`` options.
    """

    def __init__(self, host: str = "localhost", port: int | None = None, max_pool_size: int = 8192,
                 max_expire_time: int = 7200, max_timeout_seconds: float = 5, local_mode: bool = True,
                 lazy_launch: bool = False, **options: Any) -> None:
        super().__init__(host=host, port=port, max_pool_size=max_pool_size, max_expire_time=max_expire_time,
                         max_timeout_seconds=max_timeout_seconds, local_mode=local_mode, **options)
        if lazy_launch:
            log.warning("DistConf: lazy_launch is deprecated (in AgentScope too) and ignored")
