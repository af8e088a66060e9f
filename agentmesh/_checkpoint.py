"""An agent's checkpoint: its state as bytes, taken after each call and restored on failover."""
from __future__ import annotations

import copy
from typing import Any

from . import _codec

_STATE_DICT, _ATTRS = b"S", b"A"


def checkpoint_of(agent: Any) -> bytes:
    """The agent's state as bytes: its state_dict() where defined, else its attributes."""
    state_dict = getattr(agent, "state_dict", None)
    if callable(state_dict):
        return _STATE_DICT + _codec.dumps_plain_first(state_dict())
    return _ATTRS + _codec.dumps_plain_first(copy.copy(agent.__dict__))


def checkpoint_kind(blob: bytes) -> str:
    """"state_dict" or "attrs": how a checkpoint was taken."""
    return "state_dict" if blob[:1] == _STATE_DICT else "attrs"


def restore_checkpoint(agent: Any, blob: bytes) -> None:
    """Put a checkpoint made by checkpoint_of back into agent."""
    state = _codec.loads(blob[1:])
    if blob[:1] == _STATE_DICT:
        agent.load_state_dict(state)
    else:
        agent.__dict__.update(state)
