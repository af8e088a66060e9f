"""AgentBase: the agent model every distributable agent builds on."""
from __future__ import annotations

import contextlib
import copy
import threading
import uuid
from typing import Any, Iterator

from ..rpc._meta import RpcMeta, async_func
from ._memory import TemporaryMemory

_assigned = threading.local()


@contextlib.contextmanager
def assigned_agent_id(agent_id: str) -> Iterator[None]:
    """Make agents constructed in this block take agent_id (their proxy's id)."""
    _assigned.agent_id = agent_id
    try:
        yield
    finally:
        _assigned.agent_id = None


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
        self.agent_id = getattr(_assigned, "agent_id", None) or uuid.uuid4().hex

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


_STATE_DICT, _ATTRS = b"S", b"A"


def checkpoint_of(agent: Any) -> bytes:
    """The agent's state as bytes: its state_dict() where defined, else its attributes."""
    from ..rpc import _wire

    state_dict = getattr(agent, "state_dict", None)
    if callable(state_dict):
        return _STATE_DICT + _wire.dumps_plain_first(state_dict())
    return _ATTRS + _wire.dumps_plain_first(copy.copy(agent.__dict__))


def checkpoint_kind(blob: bytes) -> str:
    """"state_dict" or "attrs": how a checkpoint was taken."""
    return "state_dict" if blob[:1] == _STATE_DICT else "attrs"


def restore_checkpoint(agent: Any, blob: bytes) -> None:
    """Put a checkpoint made by checkpoint_of back into agent."""
    from ..rpc import _wire

    state = _wire.loads(blob[1:])
    if blob[:1] == _STATE_DICT:
        agent.load_state_dict(state)
    else:
        agent.__dict__.update(state)
