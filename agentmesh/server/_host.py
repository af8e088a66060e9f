"""One hosted agent: its mailbox, how it is built, how a call runs on it, its checkpoints."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import logging
import threading
from typing import Any, Callable

from .. import _checkpoint, _codec, _ids, _status
from ..v1 import agent_server_pb2 as pb

log = logging.getLogger("agentmesh.server")


class Work:
    """An accepted call: its arguments, the placeholders among them, and the sessions to answer."""

    __slots__ = ("call", "args", "kwargs", "placeholders", "sessions", "replay", "interleaved", "received",
                 "cancelled")

    def __init__(self, call: pb.Call, args: tuple, kwargs: dict, placeholders: list, session: Any,
                 replay: pb.Reply | None = None) -> None:
        self.call = call
        self.args = args
        self.kwargs = kwargs
        self.placeholders = placeholders
        self.sessions = [session] if session is not None else []
        #: set for a replayed call that already finished: its stored reply, to send with a fresh checkpoint
        self.replay = replay
        #: a call of a method marked interleave=True: it ran beside the others and changed no state
        self.interleaved = False
        self.received = 0.0   # when it arrived (set only while metrics are on)
        self.cancelled = False   # its caller gave up on it before it started: it is answered, not run


def _with_state(reply: pb.Reply, state: bytes) -> pb.Reply:
    """The caller's copy of a reply, carrying the agent's checkpoint (the stored reply never does)."""
    owned = pb.Reply()
    owned.CopyFrom(reply)
    owned.state = state
    return owned


class AgentHost:
    """One hosted agent: its mailbox and the runner that works through it in order.

    An idle agent costs little: its queues exist only while calls wait in them
    (an empty deque alone is 760 bytes, more than the rest of an agent).
    """

    __slots__ = ("agent_id", "agent", "cls_name", "checkpoints_on", "max_concurrency", "lock", "ready", "active",
                 "waiting", "constructed", "build", "pump", "queued", "seq", "checkpoint_seq", "deleted", "epoch", "owner",
                 "stored")

    def __init__(self, agent_id: str, agent: Any, cls_name: str, max_concurrency: int,
                 checkpoints_on: bool = False, seq: int = 0, epoch: int = 0) -> None:
        self.agent_id = agent_id
        self.epoch = epoch     # the server's epoch when this copy was made: calls aimed at another copy differ
        self.owner: Any = None   # the session that created it: checkpoints of others' calls are pushed to it
        self.agent = agent
        self.cls_name = cls_name
        self.checkpoints_on = checkpoints_on   # send the agent's state back with every reply (failover)
        self.max_concurrency = max(1, int(max_concurrency))
        self.lock = threading.Lock()
        self.ready: collections.deque[Work] | None = None     # calls to run, in order (made when one comes)
        self.active = 0
        self.waiting: collections.deque[Work] | None = None   # held back: placeholders, construction
        self.constructed: asyncio.Future | None = None   # set while the constructor runs
        self.build: tuple | None = None
        self.pump: asyncio.Task | None = None
        self.queued = 0        # calls accepted and not yet finished
        self.seq = seq         # calls completed (counting those before a restore from a checkpoint)
        self.checkpoint_seq = seq    # the same, counted by the worker threads for checkpoints
        self.deleted = False   # set by DeleteAgent: its results are not kept
        self.stored: Any = None   # a durable agent's row in the state store (_durable.Stored); None: not durable

    # -- the mailbox (its queues exist while calls are in them) ---------------------
    def hold(self, work: Work) -> None:
        """Hold a call back until its placeholders resolve or the agent is built (I/O loop)."""
        if self.waiting is None:
            self.waiting = collections.deque()
        self.waiting.append(work)

    def push_ready(self, work: Work) -> bool:
        """Queue a call to run; True when a runner should start for it (fewer than max_concurrency run)."""
        with self.lock:
            if self.ready is None:
                self.ready = collections.deque()
            self.ready.append(work)
            if self.active >= self.max_concurrency:
                return False
            self.active += 1
            return True

    def next_ready(self) -> Work | None:
        """The next call for a runner (worker thread); None when there is none and the runner stops."""
        with self.lock:
            if not self.ready:
                self.active -= 1
                if self.active == 0:
                    self.ready = None     # idle: the queue goes until the next call
                return None
            return self.ready.popleft()

    @property
    def name(self) -> str:
        """The agent's .name when it is a string, else ""."""
        name = getattr(self.agent, "name", "")
        return name if isinstance(name, str) else ""

    def find(self, call_id: str) -> Work | None:
        """The call call_id if it waits here and has not started (I/O loop)."""
        with self.lock:
            for queue in (self.ready, self.waiting):
                for work in queue or ():
                    if work.call.call_id == call_id:
                        return work
        return None

    def _invoke(self, work: Work) -> tuple[Any, pb.Reply | None]:
        """Call the method: (its result, None), or (None, the reply saying why not)."""
        call = work.call
        call_id = call.call_id
        try:
            if call.method == "__getattr__":
                name = work.args[0] if work.args and isinstance(work.args[0], str) else ""
                if not name or name.startswith("_") or not hasattr(self.agent, name):
                    return None, _status.refusal(call_id, pb.UNKNOWN_METHOD,
                                                 f"{self.cls_name} has no public attribute or method {name!r}")
                return getattr(self.agent, name), None
            method = getattr(self.agent, call.method, None)
            if method is None or not callable(method):
                return None, _status.refusal(call_id, pb.UNKNOWN_METHOD,
                                             f"{self.cls_name} has no method {call.method}()")
            return method(*work.args, **work.kwargs), None
        except Exception as exc:  # noqa: BLE001 - the agent's own error goes back to the caller
            return None, _status.raised(call_id, exc)

    def execute(self, work: Work, max_message_size: int, awaiting: Callable[[Any], Any], streams: Any) -> pb.Reply:
        """Run one call on the agent (worker thread); the reply says how it went. A method that returns a
        coroutine (a sync __call__ over an async reply) has it run on the agent loop by awaiting(); a
        generator streams its items (streams.drive). Calls it makes get ids derived from its own."""
        token = _ids.running(work.call.call_id)
        try:
            result, refused = self._invoke(work)
            if refused is not None:
                return refused
            if inspect.iscoroutine(result):     # not any awaitable: a returned placeholder stays one
                try:
                    result = awaiting(result)
                except Exception as exc:  # noqa: BLE001
                    return _status.raised(work.call.call_id, exc)
            if inspect.isgenerator(result):
                return streams.drive(work, result, max_message_size)
            if inspect.isasyncgen(result):
                return awaiting(streams.drive_async(work, result, max_message_size))
            return self._encode(work.call, result, max_message_size)
        finally:
            _ids.reset(token)

    async def execute_async(self, work: Work, max_message_size: int, streams: Any,
                            executor: concurrent.futures.Executor) -> pb.Reply:
        """Run one call on the agent loop, awaiting what the method returns; cancelled: an UNAVAILABLE reply.
        Runs in a task of its own, so the calls it makes get ids derived from its own until it ends."""
        _ids.running(work.call.call_id)
        result, refused = self._invoke(work)
        if refused is not None:
            return refused
        if inspect.iscoroutine(result):     # not any awaitable: a returned placeholder stays one
            try:
                result = await result
            except asyncio.CancelledError:
                return _status.refusal(work.call.call_id, pb.UNAVAILABLE, f"{work.call.method}() on agent "
                                       f"{self.agent_id} was cancelled by its caller", "CancelledError")
            except Exception as exc:  # noqa: BLE001
                return _status.raised(work.call.call_id, exc)
        if inspect.isasyncgen(result):
            return await streams.drive_async(work, result, max_message_size)
        if inspect.isgenerator(result):     # a plain generator may block: a worker thread drives it
            return await asyncio.get_running_loop().run_in_executor(executor, streams.drive, work, result,
                                                                    max_message_size)
        return self._encode(work.call, result, max_message_size)

    @staticmethod
    def _encode(call: pb.Call, result: Any, max_message_size: int) -> pb.Reply:
        call_id = call.call_id
        try:
            payload = _codec.dumps_plain_first(result)
        except Exception as exc:  # noqa: BLE001
            return _status.refusal(call_id, pb.BAD_PAYLOAD, f"the result of {call.method}() ({type(result).__name__}) "
                                                             f"cannot be pickled: {exc}", type(exc).__name__)
        if len(payload) > max_message_size:
            return _status.refusal(call_id, pb.TOO_LARGE, f"the result of {call.method}() is {len(payload)} bytes, "
                                                           f"over the limit of {max_message_size} bytes")
        return pb.Reply(call_id=call_id, status=pb.OK, payload=payload)

    def replayed(self, reply: pb.Reply) -> pb.Reply | None:
        """A stored reply sent again, with the agent's state if no call has completed since (worker thread).

        The store keeps no state; a caller replaying after a dropped session
        would otherwise hold an older checkpoint than the calls it was told of.
        """
        with self.lock:
            if self.checkpoint_seq != reply.seq or not self.checkpoints_on:
                return None   # later calls completed: their replies carry newer state
        try:
            return _with_state(reply, _checkpoint.checkpoint_of(self.agent))
        except Exception:  # noqa: BLE001 - checkpointed() reports it on the next call
            return None

    def checkpointed(self, reply: pb.Reply) -> pb.Reply | None:
        """The caller's copy of reply, with the agent's state after this call (worker thread).

        reply itself gets the seq but never the state: it is what the result
        store keeps and what other holders of the call's placeholder fetch.
        None when the state cannot be pickled (checkpoints are then off).
        """
        with self.lock:
            self.checkpoint_seq += 1
            reply.seq = self.checkpoint_seq
        try:
            state = _checkpoint.checkpoint_of(self.agent)
        except Exception as exc:  # noqa: BLE001 - an unpicklable attribute
            self.checkpoints_on = False
            log.warning("agent %s (%s): state cannot be pickled (%s: %s); checkpoints off for it, so "
                        "failover will restart it from its constructor", self.agent_id, self.cls_name,
                        type(exc).__name__, exc)
            return None
        return _with_state(reply, state)


def construct(cls: type, agent_id: str, args: tuple, kwargs: dict, state: bytes = b"") -> Any:
    """Build an agent with its proxy's id (worker thread), from a checkpoint when given one.

    The id is in the new object's ``__dict__`` before its constructor runs, so
    an AgentBase constructor keeps it instead of making one up.
    """
    agent = cls.__new__(cls) if cls.__new__ is object.__new__ else cls.__new__(cls, *args, **kwargs)
    if state and _checkpoint.checkpoint_kind(state) == "attrs":
        _checkpoint.restore_checkpoint(agent, state)   # the state is all of it: no second run of the constructor
        return agent
    try:
        agent.__dict__["agent_id"] = agent_id
    except AttributeError:
        pass
    if isinstance(agent, cls):
        agent.__init__(*args, **kwargs)
    if state:
        _checkpoint.restore_checkpoint(agent, state)
    try:
        agent.agent_id = agent_id
    except AttributeError:
        pass
    return agent
