"""Durable agents (issue 26) where servers differ: placed only on servers that commit to their store, and a
reply's wait for its commit bounded as the server is told. Real etcd, real servers, real SQLite files."""
from __future__ import annotations

import json
import os
import signal

import pytest

import agentmesh
from agentmesh import Msg
from agentmesh.discovery import keys
from agentmesh.store import open_store
from conftest import etcd_get_prefix, wait_until
from sample_agents import Echo


def test_durable_agents_are_placed_only_on_servers_with_their_store(mesh, namespace, runtime, servers, tmp_path):
    """Servers publish which state store they commit to. Durable agents go only to a server with this
    process's store (the roomiest servers here have none, or another file), plain agents anywhere; with that
    server SIGKILLed, a durable agent comes back in a child server of this process (which has the store), not on
    a server where its row is not."""
    url, other = f"sqlite://{tmp_path}/state.db", f"sqlite://{tmp_path}/other.db"
    bare = servers(capacity=50, registry=mesh.url, namespace=namespace)
    elsewhere = servers(capacity=50, registry=mesh.url, namespace=namespace, state_store=other)
    kept = servers(capacity=5, registry=mesh.url, namespace=namespace, state_store=url)
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 3)
    records = {r["server_id"]: r for r in etcd_get_prefix(mesh.url, keys.servers_prefix(namespace)).values()}
    assert "store" not in records[bare.server_id]
    assert records[kept.server_id]["store"] != records[elsewhere.server_id]["store"]
    assert url not in json.dumps(records) and str(tmp_path) not in json.dumps(records)   # a digest, not a path
    runtime.configure(state_store=url)
    durable = [Echo(f"d{i}").to_dist(lifetime="detached") for i in range(3)]
    plain = [Echo(f"p{i}").to_dist() for i in range(4)]
    assert [a(Msg("u", 1)).content["count"] for a in durable] == [1, 1, 1]
    assert {a.server for a in durable} == {kept.address}
    assert {a.server for a in plain} <= {bare.address, elsewhere.address}
    os.kill(kept.pid, signal.SIGKILL)
    assert [a(Msg("u", 2)).content["count"] for a in durable] == [2, 2, 2]    # from the store, in a child server
    assert not {a.server for a in durable} & {bare.address, elsewhere.address, kept.address}


def test_a_reply_waits_for_its_commit_as_long_as_the_server_is_told_then_fails_and_the_state_follows(
        servers, tmp_path):
    """state_store_wait=1: with the SQLite file write-locked by another process, a state-changing call fails
    after about 1 s with StoreUnavailableError saying it ran; once the lock goes, that state is committed (the
    store holds it) and the next call goes on from it."""
    import sqlite3
    import time as clock

    from agentmesh import errors

    url = f"sqlite://{tmp_path}/wait.db"
    server = servers(capacity=10, state_store=url, state_store_wait=1.0)
    agentmesh.init(state_store=url)
    try:
        agent = Echo("w").to_dist(host="127.0.0.1", port=server.port, lifetime="detached")
        assert agent(Msg("u", 1)).content["count"] == 1
        blocker = sqlite3.connect(url[len("sqlite://"):], isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        began = clock.monotonic()
        try:
            with pytest.raises(errors.AgentCallError, match="did not take its state within 1 s") as err:
                agent(Msg("u", 2)).content
            waited = clock.monotonic() - began
        finally:
            blocker.execute("COMMIT")
            blocker.close()
        assert err.value.remote_type == "StoreUnavailableError"
        assert 0.9 <= waited < 10, waited
        check = open_store(url)
        try:
            wait_until(lambda: check.get(agent.agent_id).seq >= 2, timeout=20)   # committed once the store is back
        finally:
            check.close()
        assert agent(Msg("u", 3)).content["count"] == 3
    finally:
        agentmesh.shutdown()
        agentmesh.init(state_store="")
