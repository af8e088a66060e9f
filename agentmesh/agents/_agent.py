"""AgentBase: the agent model every distributable agent builds on."""
from __future__ import annotations

import inspect
import logging
from typing import Any, Iterable

from ..rpc import RpcMeta, RpcObject, async_func, tell
from ._memory import TemporaryMemory
from .._ids import new_id

log = logging.getLogger("agentmesh")


class AgentBase(metaclass=RpcMeta):
    """An agent: a name, a memory, and reply(); distributable with to_dist().

    ``reply`` and ``__call__`` are asynchronous on a proxy; other public
    methods are synchronous unless decorated with ``@async_func``.

    ``__call__`` hands its reply to the agent's audience (set by a msghub, or
    with ``reset_audience``): local agents ``observe`` it at once, proxies are
    told without waiting (a failure is logged, not raised).
    """

    #: who observes this agent's replies; None (and absent from the instance) outside a msghub
    _audience: list | None = None

    def __init__(self, name: str, sys_prompt: str | None = None, model_config_name: str | None = None,
                 use_memory: bool = True, **kwargs: Any) -> None:
        self.name = name
        self.sys_prompt = sys_prompt
        self.model_config_name = model_config_name
        self.memory = TemporaryMemory() if use_memory else None
        # a server building this agent for a proxy puts the proxy's id in first
        self.agent_id = self.__dict__.get("agent_id") or new_id()

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
        reply = self.reply(x, *args, **kwargs)
        if inspect.iscoroutine(reply):         # an ``async def reply``: so is the call (a placeholder stays one)
            return self._broadcast_when_done(reply)
        if self._audience is not None:
            self._broadcast_to_audience(reply)
        return reply

    async def _broadcast_when_done(self, reply: Any) -> Any:
        value = await reply
        if self._audience is not None:
            self._broadcast_to_audience(value)
        return value

    # -- the audience (AgentScope's names) -------------------------------------
    def reset_audience(self, audience: Iterable[Any]) -> None:
        """Make audience (less this agent) the ones that observe each reply of ``__call__``.

        This agent is recognised by its ``agent_id``, so a proxy of it in the
        list (as a server's copy of the agent receives it) is left out too.
        """
        self._audience = [agent for agent in audience if not self._is_me(agent)]

    def clear_audience(self) -> None:
        """Nobody observes this agent's replies any more."""
        self.__dict__.pop("_audience", None)   # an agent without audience checkpoints as if it never had one

    def rm_audience(self, audience: Any) -> None:
        """Take one agent, or each of a list, out of the audience (a WARNING for one that is not in it)."""
        for agent in audience if isinstance(audience, (list, tuple)) else [audience]:
            if self._audience is not None and agent in self._audience:
                self._audience.remove(agent)
            else:
                log.warning("agent %s: %s is not in its audience, not removed", self.name,
                            getattr(agent, "name", agent))

    def _broadcast_to_audience(self, x: Any) -> None:
        """Each member of the audience observes x: a proxy is told without waiting, a local agent at once."""
        for agent in self._audience or ():
            if isinstance(agent, RpcObject):
                tell(agent, "observe", (x,), {})
            else:
                agent.observe(x)

    def _is_me(self, agent: Any) -> bool:
        if agent is self:
            return True
        other = agent.agent_id if isinstance(agent, (RpcObject, AgentBase)) else None
        return other is not None and other == getattr(self, "agent_id", None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={getattr(self, 'name', None)!r})"

