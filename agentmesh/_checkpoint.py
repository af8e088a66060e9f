"""An agent's checkpoint: its state as bytes, taken after each call and restored on failover, and the
seam where checkpoints are kept (CheckpointStore; in memory by default)."""
from __future__ import annotations

import collections
import copy
import dataclasses
import threading
from typing import Any, Iterable, Protocol

from . import _codec
from ._protocol import ANSWERED_BYTES
from .v1 import agent_server_pb2 as pb

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


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """An agent's state after its seq-th completed call, and the replies of recent calls from others whose
    effects that state holds (a re-created agent answers replays of those calls instead of running them)."""

    seq: int = 0
    state: bytes = b""
    answered: tuple[pb.Reply, ...] = ()


class CheckpointStore(Protocol):
    """Where agents' checkpoints live: put after a completed call, get on re-creation, delete with the agent.

    put is called on the I/O loop and must not block there: a store that
    writes to disk or a database hands the write to a writer of its own.
    get may block (it runs on the thread that moves the agent).
    """

    def put(self, agent_id: str, seq: int, state: bytes, answered: Iterable[pb.Reply] = ()) -> None:
        """Keep (seq, state) if newer than what is kept, and the replies that came with it."""

    def get(self, agent_id: str) -> Checkpoint | None:
        """The latest checkpoint of agent_id, None if there is none."""

    def delete(self, agent_id: str) -> None:
        """Forget agent_id's checkpoint (the agent ended)."""


class MemoryCheckpoints:
    """The store in the creator's memory (the default): a put is two dict writes, safe on the I/O loop;
    get copies under a lock, safe on any thread. Answered replies are kept newest first within
    ANSWERED_BYTES per agent."""

    def __init__(self, answered_bytes: int = ANSWERED_BYTES) -> None:
        self._latest: dict[str, tuple[int, bytes]] = {}
        self._answered: dict[str, collections.OrderedDict[str, pb.Reply]] = {}
        self._answered_size: dict[str, int] = {}
        self._answered_bytes = answered_bytes
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._latest)

    def put(self, agent_id: str, seq: int, state: bytes, answered: Iterable[pb.Reply] = ()) -> None:
        latest = self._latest.get(agent_id)
        if latest is None or seq > latest[0]:
            self._latest[agent_id] = (seq, state)
        for reply in answered:
            self._keep(agent_id, reply)

    def _keep(self, agent_id: str, reply: pb.Reply) -> None:
        with self._lock:
            kept = self._answered.setdefault(agent_id, collections.OrderedDict())
            size = self._answered_size.get(agent_id, 0)
            old = kept.pop(reply.call_id, None)
            if old is not None:
                size -= old.ByteSize()
            kept[reply.call_id] = reply
            size += reply.ByteSize()
            while size > self._answered_bytes and kept:
                size -= kept.popitem(last=False)[1].ByteSize()
            self._answered_size[agent_id] = size

    def get(self, agent_id: str) -> Checkpoint | None:
        latest = self._latest.get(agent_id)
        with self._lock:
            answered = tuple(self._answered.get(agent_id, {}).values())
        if latest is None and not answered:
            return None
        seq, state = latest or (0, b"")
        return Checkpoint(seq, state, answered)

    def delete(self, agent_id: str) -> None:
        self._latest.pop(agent_id, None)
        with self._lock:
            self._answered.pop(agent_id, None)
            self._answered_size.pop(agent_id, None)
