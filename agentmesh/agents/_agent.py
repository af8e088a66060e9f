"""AgentBase: the agent model every distributable agent builds on."""
from __future__ import annotations

import uuid
from typing import Any

from ..rpc import RpcMeta, async_func
from ._memory import TemporaryMemory


class AgentBase(metaclass=RpcMeta):
    """An agent: a name, a memory, and reply(); distributable with to_dist().

    ``reply`` and ``__call__`` are asynchronous on a proxy; other public
    methods are synchronous unless decorated with ``@async_func``.
    """

    def __init__(self, name: str, sys_prompt: str | None = None, model_config_name: str | None = None,
                 use_memory: bool = True, **kwargs: Any) -> None:
        self.name = name
        self.sys_prompt = sys_prompt
        self.model_config_name = model_config_name
        self.memory = TemporaryMemory() if use_memory else None
        # a server building this agent for a proxy puts the proxy's id in first
        self.agent_id = self.__dict__.get("agent_id") or uuid.uuid4().hex

    @property
    def _oid(self) -> str:
        """AgentScope's name for agent_id."""
        return self.agent_id

    @_oid.setter
    def _oid(self, agent_id: str) -> None:
        self.agent_id = agent_id

    def reply(self, x: Any = None) -> Any:
        """Answer x; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} does not define reply()")

    def observe(self, x: Any) -> None:
        """Take x into memory without answering."""
        if self.memory is not None:
            self.memory.add(x)

    @async_func
    def __call__(self, x: Any = None, *args: Any, **kwargs: Any) -> Any:
        return self.reply(x, *args, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={getattr(self, 'name', None)!r})"
