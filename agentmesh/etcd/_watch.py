"""Watches: an async iterator of changes under a prefix that survives disconnects."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, MutableSet

import grpc

from agentmesh.etcdv3 import etcd_pb2 as pb

from ._auth import Auth
from ._endpoints import Endpoints, write
from ._errors import (AUTH_ERRORS, TRANSIENT, EtcdAuthError, EtcdError, EtcdUnavailable,
                      StreamBroken, is_token_error, short, translate)
from ._keys import prefix_end, to_str

log = logging.getLogger("agentmesh.etcd")

KeyValue = pb.KeyValue


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change under a watched prefix.

    ``type`` is "PUT", "DELETE", or "RESYNC". A RESYNC replaces everything
    the consumer knew: the revision it should have resumed from was
    compacted, so ``snapshot`` holds a PUT event for every key under the
    prefix as of ``mod_revision``, and events after that revision follow.
    """

    type: str
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0
    snapshot: tuple["WatchEvent", ...] = ()

    @classmethod
    def from_kv(cls, type_: str, kv: KeyValue) -> "WatchEvent":
        """An event for a KeyValue."""
        return cls(type_, to_str(kv.key), kv.value, kv.mod_revision, kv.create_revision,
                   kv.version, kv.lease)


_WAKE = object()


class Watch:
    """An async iterator of :class:`WatchEvent` for one prefix that survives disconnects.

    A background task owns the Watch stream. When the stream breaks (etcd
    restarted, endpoint died, no answer to a progress probe) it reopens it on
    the next endpoint from the last delivered revision + 1, retrying with
    backoff for as long as needed, or until ``max_disconnect`` seconds when
    that is set (then the iterator raises :class:`EtcdUnavailable`). Creating
    the watch must succeed within the client's timeout, else ``start()`` (or
    the first ``__anext__``) raises EtcdUnavailable. Errors that retrying
    cannot fix (auth refused) are raised by the iterator. ``aclose()`` or
    ``client.close()`` ends it.
    """

    # An idle stream is probed with a progress request this often, so a hung
    # etcd is noticed in about this plus the client timeout.
    probe_interval = 5.0
    queue_size = 1024

    def __init__(self, endpoints: Endpoints, auth: Auth, prefix: bytes,
                 start_revision: int | None, max_disconnect: float | None, *,
                 snapshot: Callable[[str], Awaitable[tuple[list[KeyValue], int]]],
                 live: MutableSet["Watch"]) -> None:
        """``snapshot`` reads a prefix (for RESYNC); ``live``: the client's started watches."""
        self._endpoints = endpoints
        self._auth = auth
        self._snapshot = snapshot
        self._live = live
        self._key = prefix
        self._range_end = prefix_end(prefix)
        self._next_rev = start_revision if start_revision else None
        self._max_disconnect = max_disconnect
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._started: asyncio.Future | None = None
        self._final: BaseException | None = None
        self._created = 0  # streams created so far

    @property
    def prefix(self) -> str:
        """The watched prefix."""
        return to_str(self._key)

    @property
    def revision(self) -> int:
        """The revision the watch has delivered up to (it resumes after it); 0 before start."""
        return (self._next_rev or 1) - 1

    async def start(self) -> "Watch":
        """Create the watch now (idempotent); raises EtcdUnavailable if etcd does not answer."""
        if self._task is None:
            if self._final is not None:
                raise EtcdError("watch is closed")
            loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue(self.queue_size)
            self._started = loop.create_future()
            self._task = loop.create_task(self._run(), name=f"etcd-watch-{self.prefix}")
            self._live.add(self)
        assert self._started is not None
        await asyncio.shield(self._started)
        return self

    def __aiter__(self) -> "Watch":
        return self

    async def __anext__(self) -> WatchEvent:
        if self._task is None and self._final is not None:
            raise StopAsyncIteration
        await self.start()
        assert self._queue is not None
        while True:
            if not self._queue.empty():
                item = self._queue.get_nowait()
            elif self._final is not None:
                raise self._final
            else:
                item = await self._queue.get()
            if item is not _WAKE:
                return item

    async def aclose(self) -> None:
        """Stop watching; iteration then ends."""
        task, self._task = self._task, None
        if self._final is None:
            self._final = StopAsyncIteration()
        if self._started is not None and not self._started.done():
            self._started.set_exception(EtcdError("watch closed before it was created"))
            self._started.exception()
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._live.discard(self)

    async def __aenter__(self) -> "Watch":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _finish(self, error: BaseException) -> None:
        """End the iterator with ``error`` (StopAsyncIteration for a clean end)."""
        self._final = error
        assert self._started is not None and self._queue is not None
        if not self._started.done():
            self._started.set_exception(error)
            self._started.exception()  # mark retrieved; start() re-raises it
        try:
            self._queue.put_nowait(_WAKE)
        except asyncio.QueueFull:
            pass  # the consumer has items to read first, then sees _final

    async def _run(self) -> None:
        """Keep a Watch stream open, reopening it after failures."""
        endpoints, auth = self._endpoints, self._auth
        loop = asyncio.get_running_loop()
        begun = loop.time()
        down_since: float | None = None
        backoff = 0.05
        renew, reauthed = False, False
        stale: str | None = None
        while True:
            idx = endpoints.idx
            token = auth.token
            created = self._created
            try:
                if renew:
                    renew = False
                    await auth.renew(stale)
                await auth.ensure()
                idx = endpoints.idx
                await self._stream(idx, begun)
                failure: object = None  # a RESYNC: reopen at once
            except grpc.aio.AioRpcError as err:
                failure = err
                if err.code() not in TRANSIENT and not (auth.user and is_token_error(err)):
                    self._finish(translate("Watch", err))
                    return
            except EtcdUnavailable as err:
                failure = err
            except EtcdAuthError as err:
                failure = err
                if not auth.user:
                    self._finish(err)
                    return
            except EtcdError as err:
                self._finish(err)
                return
            except (asyncio.TimeoutError, StreamBroken) as err:
                failure = err
            except Exception as err:  # a bug must end the iterator, not hang it
                log.exception("etcd watch on %r failed", self.prefix)
                self._finish(EtcdError(f"watch failed: {err!r}"))
                return
            if self._created != created:  # the stream worked for a while
                down_since, backoff, reauthed = None, 0.05, False
            if failure is None:
                continue
            if isinstance(failure, EtcdAuthError) or (
                    isinstance(failure, grpc.aio.AioRpcError) and failure.code() not in TRANSIENT):
                if reauthed:
                    self._finish(failure if isinstance(failure, EtcdError)
                                 else translate("Watch", failure))
                    return
                renew, reauthed, stale = True, True, token
                continue
            endpoints.rotate(idx, failure)
            now = loop.time()
            if not self._started.done():
                if now - begun >= endpoints.timeout:
                    self._finish(endpoints.unavailable("Watch", failure))
                    return
            else:
                if down_since is None:
                    down_since = now
                    log.info("etcd watch on %r broken (%s); resuming from revision %d",
                             self.prefix, short(failure), self._next_rev or 0)
                if self._max_disconnect is not None and now - down_since >= self._max_disconnect:
                    self._finish(endpoints.unavailable("Watch", failure))
                    return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _stream(self, idx: int, begun: float) -> None:
        """One Watch stream: create, then deliver events until it breaks or needs a RESYNC."""
        endpoints = self._endpoints
        loop = asyncio.get_running_loop()
        call = endpoints.open_stream(idx, "Watch", self._auth.metadata(streaming=True))
        pending: asyncio.Future | None = None
        try:
            create = pb.WatchCreateRequest(key=self._key, range_end=self._range_end,
                                           start_revision=self._next_rev or 0)
            await write(call, pb.WatchRequest(create_request=create))
            wait = endpoints.timeout
            if not self._started.done():
                wait = max(0.05, begun + endpoints.timeout - loop.time())
            response = await asyncio.wait_for(call.read(), wait)
            if response is grpc.aio.EOF:
                raise StreamBroken("Watch stream closed before the watch was created")
            if response.canceled or not response.created:
                raise self._cancel_error(response)
            if self._next_rev is None:
                self._next_rev = response.header.revision + 1
            self._created += 1
            if not self._started.done():
                self._started.set_result(None)
            else:
                log.info("etcd watch on %r resumed from revision %d", self.prefix, self._next_rev)
            probed = False
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait(
                    {pending}, timeout=endpoints.timeout if probed else self.probe_interval)
                if not done:
                    if probed:
                        raise StreamBroken("no answer to a watch progress request")
                    await write(call, pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                    probed = True
                    continue
                response, pending, probed = pending.result(), None, False
                if response is grpc.aio.EOF:
                    raise StreamBroken("Watch stream closed by etcd")
                if response.compact_revision:
                    await self._resync(response.compact_revision)
                    return
                if response.canceled:
                    raise self._cancel_error(response)
                for event in response.events:
                    type_ = "DELETE" if event.type == pb.Event.DELETE else "PUT"
                    await self._queue.put(WatchEvent.from_kv(type_, event.kv))
                    self._next_rev = event.kv.mod_revision + 1
        finally:
            if pending is not None:
                pending.cancel()
            call.cancel()

    def _cancel_error(self, response: pb.WatchResponse) -> Exception:
        """The error for a watch etcd refused or cancelled."""
        reason = response.cancel_reason or "no reason given"
        low = reason.lower()
        if "no leader" in low or "leader changed" in low:
            return StreamBroken(f"watch cancelled by etcd: {reason}")
        if any(text in low for text in AUTH_ERRORS):
            return EtcdAuthError(f"etcd refused the watch on {self.prefix!r}: {reason}",
                                 grpc.StatusCode.PERMISSION_DENIED)
        return EtcdError(f"etcd cancelled the watch on {self.prefix!r}: {reason}")

    async def _resync(self, compact_revision: int) -> None:
        """Replace lost history with a snapshot (one RESYNC event) and continue after it."""
        log.warning("etcd watch on %r: revision %d was compacted (oldest kept: %d); "
                    "delivering a RESYNC snapshot", self.prefix, self._next_rev or 0,
                    compact_revision)
        kvs, revision = await self._snapshot(self.prefix)
        snapshot = tuple(WatchEvent.from_kv("PUT", kv) for kv in kvs)
        await self._queue.put(WatchEvent("RESYNC", self.prefix, b"", revision,
                                         snapshot=snapshot))
        self._next_rev = revision + 1
