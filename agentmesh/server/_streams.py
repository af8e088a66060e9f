"""Streamed replies: a generator method's items wait here, a few at a time, for their one reader.

The agent's runner drives the generator (a worker thread for a generator, the
agent loop for an async generator), so the agent is busy until it ends, as for
any call. Each item is pickled and held until the reader (``ReadStream``, on the
I/O loop) takes it; beyond ``WINDOW`` items the generator waits, so a slow
reader never fills the server's memory. A stream nobody reads within the
result ttl, or whose reader goes away, is abandoned: the generator is closed.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from typing import Any, AsyncIterator, Callable

import grpc

from .. import _codec, _status
from ..v1 import agent_server_pb2 as pb
from ._results import ResultStore

log = logging.getLogger("agentmesh.server")

#: items a stream holds ahead of its reader; the generator waits beyond that
WINDOW = 16
#: bytes of waiting items sent together in one message (a bigger item goes alone)
BATCH_BYTES = 1 << 20


class Abandoned(Exception):
    """The stream's reader went away, or never came: the generator stops."""


class Stream:
    """One generator call's items between its producer (any thread) and its reader (the I/O loop)."""

    def __init__(self, call_id: str, io: asyncio.AbstractEventLoop, ttl: float) -> None:
        self.call_id = call_id
        self._io = io
        self.deadline = time.monotonic() + ttl    # unread by then: abandoned
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._items: collections.deque[bytes] = collections.deque()
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self.end: pb.Reply | None = None
        self.claimed = False       # its one reader has come
        self.abandoned = ""        # why the producer must stop

    # -- the producer ---------------------------------------------------------------
    def _full(self) -> bool:
        if not self.claimed and time.monotonic() > self.deadline:
            self.abandoned = "nobody read it within the result ttl"
        return len(self._items) >= WINDOW and not self.abandoned

    def put(self, payload: bytes) -> None:
        """Add an item, waiting while the window is full (worker thread); Abandoned when the reader is gone."""
        with self._lock:
            while self._full():
                self._room.wait(1.0)
            if self.abandoned:
                raise Abandoned(self.abandoned)
            self._items.append(payload)
        self._io.call_soon_threadsafe(self._wake.set)

    async def put_async(self, payload: bytes) -> None:
        """Add an item from a coroutine (the agent loop), awaiting room without holding a thread."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if not self._full():
                    if self.abandoned:
                        raise Abandoned(self.abandoned)
                    self._items.append(payload)
                    break
                room = loop.create_future()
                self._room_waiters.append((loop, room))
            try:
                await asyncio.wait_for(room, 1.0)
            except asyncio.TimeoutError:
                pass
        self._io.call_soon_threadsafe(self._wake.set)

    def finish(self, end: pb.Reply) -> None:
        """The generator ended (end: OK, or why not); any thread."""
        with self._lock:
            self.end = end
        self._io.call_soon_threadsafe(self._wake.set)

    def abandon(self, why: str) -> None:
        with self._lock:
            self.abandoned = self.abandoned or why
            self._make_room()

    def _make_room(self) -> None:
        self._room.notify_all()
        waiters, self._room_waiters = self._room_waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(lambda fut=fut: fut.done() or fut.set_result(None))

    # -- the reader (I/O loop) ----------------------------------------------------------
    async def read(self, budget: int) -> AsyncIterator[pb.StreamItem]:
        """The items as they come (those waiting go together, up to budget bytes a message), then the end."""
        ended = False
        try:
            while True:
                self._wake.clear()
                batch: list[bytes] = []
                with self._lock:
                    size = 0
                    while self._items and (not batch or size + len(self._items[0]) <= budget):
                        size += len(self._items[0])
                        batch.append(self._items.popleft())
                    if batch:
                        self._make_room()
                    end = self.end if not batch else None   # read with the items: none can slip in between
                if batch:
                    yield pb.StreamItem(items=batch)
                elif end is not None:
                    ended = True
                    yield pb.StreamItem(end=end)
                    return
                else:
                    await self._wake.wait()
        finally:
            if not ended:
                self.abandon("its reader went away")


class Streams:
    """The open streams of one server, by call id, and what drives a generator into one."""

    def __init__(self, ttl: float, send_early: Callable[[Any, pb.Reply], None]) -> None:
        self.ttl = ttl
        self._send_early = send_early          # (work, reply): tell the caller now that its call streams
        self._open: dict[str, Stream] = {}
        self._opened: dict[str, list[asyncio.Future]] = {}   # readers waiting for a call to start streaming
        self.io: asyncio.AbstractEventLoop | None = None      # the I/O loop, bound at start

    def sweep(self) -> None:
        """Drop the streams that ended and that nobody came to read within the ttl (I/O loop)."""
        now = time.monotonic()
        for call_id, stream in list(self._open.items()):
            if stream.end is not None and not stream.claimed and now > stream.deadline:
                del self._open[call_id]

    def _start(self, work: Any) -> Stream:
        call_id = work.call.call_id
        assert self.io is not None
        stream = self._open[call_id] = Stream(call_id, self.io, self.ttl)
        self.io.call_soon_threadsafe(self._wake_readers, call_id)
        self._send_early(work, pb.Reply(call_id=call_id, status=pb.OK, stream=True))
        return stream

    def _wake_readers(self, call_id: str) -> None:
        for fut in self._opened.pop(call_id, ()):
            if not fut.done():
                fut.set_result(None)

    def _ended(self, stream: Stream, end: pb.Reply, items: int) -> pb.Reply:
        stream.finish(end)
        self.io.call_soon_threadsafe(self._wake_readers, stream.call_id)   # type: ignore[union-attr]
        return pb.Reply(call_id=stream.call_id, status=end.status, stream=True, error_type=end.error_type,
                        error_message=end.error_message or f"{items} item(s) streamed")

    def drive(self, work: Any, generator: Any, max_message_size: int) -> pb.Reply:
        """Run a generator to its end into a new stream (worker thread); the call's reply."""
        stream, items, end = self._start(work), 0, None
        try:
            for item in generator:
                stream.put(self._item(work, item, items, max_message_size))
                items += 1
        except Abandoned as why:
            generator.close()
            end = _stopped(work, items, str(why))
        except _Unpicklable as bad:
            generator.close()
            end = bad.reply
        except Exception as exc:  # noqa: BLE001 - the agent's own error ends the stream
            end = _status.raised(work.call.call_id, exc)
        return self._ended(stream, end or pb.Reply(call_id=work.call.call_id, status=pb.OK), items)

    async def drive_async(self, work: Any, generator: Any, max_message_size: int) -> pb.Reply:
        """Run an async generator to its end into a new stream (agent loop); the call's reply."""
        stream, items, end = self._start(work), 0, None
        try:
            async for item in generator:
                await stream.put_async(self._item(work, item, items, max_message_size))
                items += 1
        except Abandoned as why:
            await generator.aclose()
            end = _stopped(work, items, str(why))
        except _Unpicklable as bad:
            await generator.aclose()
            end = bad.reply
        except asyncio.CancelledError:
            end = _stopped(work, items, "its caller cancelled it")
        except Exception as exc:  # noqa: BLE001
            end = _status.raised(work.call.call_id, exc)
        return self._ended(stream, end or pb.Reply(call_id=work.call.call_id, status=pb.OK), items)

    @staticmethod
    def _item(work: Any, item: Any, index: int, max_message_size: int) -> bytes:
        try:
            payload = _codec.dumps_plain_first(item)
        except Exception as exc:  # noqa: BLE001
            raise _Unpicklable(_status.refusal(work.call.call_id, pb.BAD_PAYLOAD, (
                f"item {index} of the stream of {work.call.method}() ({type(item).__name__}) cannot be pickled: "
                f"{exc}"), type(exc).__name__)) from None
        if len(payload) > max_message_size:
            raise _Unpicklable(_status.refusal(work.call.call_id, pb.TOO_LARGE, (
                f"item {index} of the stream of {work.call.method}() is {len(payload)} bytes, over the limit "
                f"of {max_message_size} bytes")))
        return payload

    async def read(self, call_id: str, results: ResultStore, budget: int) -> AsyncIterator[pb.StreamItem]:
        """The stream of call_id for its one reader, waiting while the call is queued (I/O loop).

        LookupError: no such call here; ValueError: it is being read already.
        """
        while call_id not in self._open:
            done = results.get(call_id)
            if done is not None:     # it ended: not a generator (its reply says what it returned), or read
                yield pb.StreamItem(end=done if not done.stream else _status.refusal(
                    call_id, pb.EXPIRED, f"the stream of call {call_id} was read already, or abandoned"))
                return
            if call_id not in results.running:
                raise LookupError(f"no call {call_id} here (never made here, or its result expired)")
            opened = asyncio.get_running_loop().create_future()
            self._opened.setdefault(call_id, []).append(opened)
            finished = asyncio.ensure_future(results.wait(call_id, grace=0))
            await asyncio.wait((opened, finished), return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            waiting = self._opened.get(call_id, [])
            if opened in waiting:
                waiting.remove(opened)
            if not waiting:
                self._opened.pop(call_id, None)
        stream = self._open[call_id]
        if stream.claimed:
            raise ValueError(f"the stream of call {call_id} is read by another reader already (a stream is "
                             f"read once)")
        stream.claimed = True
        try:
            async for item in stream.read(budget):
                yield item
        finally:
            self._open.pop(call_id, None)


    async def serve(self, call_id: str, results: ResultStore, context: grpc.aio.ServicerContext, budget: int,
                    server_id: str) -> None:
        """ReadStream: write the stream of call_id to its reader; NOT_FOUND / FAILED_PRECONDITION saying why not."""
        try:
            async with contextlib.aclosing(self.read(call_id, results, min(budget, BATCH_BYTES))) as messages:
                async for message in messages:
                    try:
                        await context.write(message)
                    except Exception as exc:  # noqa: BLE001 - grpc raises ExecuteBatchError & co for a gone client
                        log.debug("stream of call %s: its reader is gone (%s); the generator is closed", call_id, exc)
                        return
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"agent server {server_id}: {exc}")
        except ValueError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"agent server {server_id}: {exc}")


class _Unpicklable(Exception):
    def __init__(self, reply: pb.Reply) -> None:
        super().__init__(reply.error_message)
        self.reply = reply


def _stopped(work: Any, items: int, why: str) -> pb.Reply:
    return _status.refusal(work.call.call_id, pb.UNAVAILABLE, f"the stream of {work.call.method}() stopped after "
                                                              f"{items} item(s): {why}", "StreamAbandoned")
