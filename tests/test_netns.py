"""Multi-host failover: agent servers on hosts of their own (network namespaces), one host cut off.

Topology (everything exists only inside this machine, and only for the test)::

    root namespace: this test process, etcd            ns A: agent server A
      amr<pid>a  10.231.n.1/30  <------ veth ------>  amn<pid>a  10.231.n.2/30
      amr<pid>b  10.231.m.1/30  <------ veth ------>  amn<pid>b  10.231.m.2/30      ns B: agent server B

Each namespace has only its veth end (and lo), no default route, and IPv4
forwarding is not touched, so a server can reach nothing but the root side of
its own veth. In the root namespace each /30 also gets a high-metric blackhole
route: while a root-side veth is down its connected route is gone, and
without the blackhole, packets for the cut host would follow the default
route out of the machine.

The cut takes the link down while the server process keeps running with its
agents: it cannot be reached, nor reach etcd. Two places to pull it:

- ``host``: the namespace's own end (``ip -n NS link set amn.. down``). The
  root side keeps its route and the packets vanish silently, so the proxy
  notices through its gRPC keepalive (ping every 1 s, 1 s timeout).
- ``root``: the root side (``ip link set amr.. down``). Its connected route
  goes, the blackhole route takes over, and sends fail at once locally
  (EINVAL), so the proxy notices at its next keepalive ping.

Then the link comes back up, and the old server, which still holds the
moved agent, must fence itself: drop the agent and refuse the old epoch.
"""
from __future__ import annotations

import os
import sys
import time

import pytest

from agentmesh import Msg
from agentmesh.discovery import keys
from agentmesh.relocation import Relocation
from agentmesh.v1 import agent_server_pb2 as pb
from conftest import etcd_get_prefix, wait_until
from sample_agents import Echo
from netns_hosts import (  # noqa: F401 - hosts is a fixture
    hosts, ServerProc, raw_call, TOKEN,
)


@pytest.fixture
def etcd_on_veths(hosts):
    """A real etcd in the root namespace on 127.0.0.1 and the root side of every veth, on a free port."""
    from agentmesh.testing import EtcdProcess, find_etcd_binary, free_port

    try:
        find_etcd_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    port = free_port()
    listen = ",".join(f"http://{ip}:{port}" for ip in ["127.0.0.1", *(h.root_ip for h in hosts)])
    etcd = EtcdProcess(name=f"agentmesh-netns-{os.getpid()}", extra_args=["--listen-client-urls", listen])
    try:
        etcd.start(client_port=port)
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture
def configured(etcd_on_veths, namespace):
    """This process placing through that etcd with the shared token, in a runtime of its own.

    The servers listen in plaintext on the namespaces' addresses (--insecure), so this process dials
    them with insecure=True: without it, plaintext to a non-loopback address is refused.
    """
    from agentmesh.testing import fresh_runtime

    with fresh_runtime(registry=etcd_on_veths.url, namespace=namespace, token=TOKEN,
                       insecure=True) as runtime:
        yield etcd_on_veths, runtime


@pytest.fixture
def netns_servers(hosts, configured, namespace):
    """One agent server per host, registered in etcd; and a way to hand over proxies for the teardown."""
    etcd, runtime = configured
    started: list[ServerProc] = []
    proxies: list = []
    try:
        for host in hosts:
            started.append(ServerProc(host, f"etcd://{host.root_ip}:{etcd.client_port}", namespace))
        for proc in started:
            proc.wait_ready()
        wait_until(lambda: len(etcd_get_prefix(etcd.url, keys.servers_prefix(namespace))) == 2, timeout=10)
        yield started, proxies.append
    finally:
        _forget_proxies(runtime)
        for proc in started:
            proc.kill()


def _forget_proxies(runtime) -> None:
    """Before the servers die and the veths go: nothing of this process may dial 10.231.x.x afterwards.

    Killing the servers must not send our proxies looking for a new home (a child server), the
    clean-up must not try to delete their agents (the addresses would then route out of the
    machine), and no session to those addresses may be left to reconnect: the test's runtime
    forgets its agents and closes.
    """
    Relocation.of(runtime).owned.clear()
    runtime.close()


def _reachable(proc: ServerProc):
    try:
        return proc.info()
    except Exception:  # noqa: BLE001 - grpc errors while the link comes back
        return None


class CutScenario:
    """Both servers up, an agent with state on one of them, its call in flight, its host cut off."""

    def __init__(self, servers, track, etcd, namespace: str, where: str) -> None:
        self.servers, self.etcd, self.namespace, self.where = servers, etcd, namespace, where
        records = etcd_get_prefix(etcd.url, keys.servers_prefix(namespace))
        assert sorted(r["address"] for r in records.values()) == sorted(p.address for p in servers)
        self.agent = Echo("netns-echo").to_dist()
        track(self.agent)
        for i in range(3):
            assert self.agent.reply(Msg("u", i)).content["count"] == i + 1
        by_address = {p.address: p for p in servers}
        assert self.agent.server in by_address, (self.agent.server, list(by_address))
        self.victim = by_address[self.agent.server]
        self.survivor = next(p for p in servers if p is not self.victim)
        info = self.victim.info()
        self.old_epoch, self.old_server_id = info.epoch, info.server_id
        self.server_key = keys.server_key(namespace, self.old_server_id)
        self.agent_key = keys.agent_key(namespace, self.agent.agent_id)

    def servers_in_registry(self) -> dict:
        return etcd_get_prefix(self.etcd.url, keys.servers_prefix(self.namespace))

    def agent_record(self) -> dict:
        return etcd_get_prefix(self.etcd.url, keys.agents_prefix(self.namespace)).get(self.agent_key, {})

    def cut_during_a_call(self) -> float:
        """Cut the agent's host while slow(1.0) runs there; check the call still returns; the time it took."""
        pending = self.agent.slow(1.0, "v")
        wait_until(lambda: self.victim.info().inflight >= 1, timeout=5)
        cut_at = time.monotonic()
        self.victim.host.cut(self.where)
        assert pending.result(timeout=20) == "v"
        took = time.monotonic() - cut_at
        print(f"\nnetns cut ({self.where} side of {self.victim.host.ns}): the 1.0 s call in flight returned "
              f"{took:.2f} s after the cut, agent moved {self.victim.address} -> {self.agent.server}",
              file=sys.stderr)
        return took

    def reconnect(self) -> None:
        self.victim.host.reconnect(self.where)

    def dump_logs(self) -> None:
        for proc in self.servers:
            print(f"--- server in {proc.host.ns} ({proc.address}) log tail:\n{proc.log()}", file=sys.stderr)


@pytest.mark.parametrize("where", ["host", "root"])
def test_cut_off_host_its_agent_moves_with_its_state_and_the_call_in_flight_returns(
        netns_servers, configured, namespace, where):
    """The agent's host loses its link (its own NIC, or the root's end of the cable) mid-call."""
    servers, track = netns_servers
    s = CutScenario(servers, track, configured[0], namespace, where)
    try:
        try:
            took = s.cut_during_a_call()
            assert took < 10, f"failover after a cut took {took:.2f} s"
            assert s.agent.server == s.survivor.address
            assert s.agent.get_count() == 3                     # the state from before the cut
            assert s.victim.proc.poll() is None                 # cut off, not dead
            # the cut-off server cannot renew its lease: its record expires; the agent's points to the new host
            wait_until(lambda: s.server_key not in s.servers_in_registry(), timeout=10)
            wait_until(lambda: s.agent_record().get("address") == s.survivor.address, timeout=5)
        finally:
            s.reconnect()
        # the link is back: the proxy stays with the new server and keeps working there
        assert s.agent.reply(Msg("u", "after")).content["count"] == 4
        assert s.agent.server == s.survivor.address
        wait_until(lambda: _reachable(s.victim), timeout=10)       # the old host answers again
        assert s.agent.reply(Msg("u", "again")).content["count"] == 5
        assert s.agent.get_count() == 5 and s.agent.server == s.survivor.address
    except BaseException:
        s.dump_logs()
        raise


def test_cut_off_server_back_on_the_network_is_fenced(netns_servers, configured, namespace):
    """After the cut the old server still holds the moved agent: once reachable again it must refuse the
    old epoch (or have dropped the agent) and must not take the agent's registry record back."""
    servers, track = netns_servers
    s = CutScenario(servers, track, configured[0], namespace, "host")
    try:
        try:
            s.cut_during_a_call()
            assert s.agent.server == s.survivor.address and s.agent.get_count() == 3
            wait_until(lambda: s.server_key not in s.servers_in_registry(), timeout=10)
            wait_until(lambda: s.agent_record().get("address") == s.survivor.address, timeout=5)
        finally:
            s.reconnect()
        wait_until(lambda: _reachable(s.victim), timeout=10)
        wait_until(lambda: s.servers_in_registry().get(s.server_key, {}).get("epoch", s.old_epoch)
                   != s.old_epoch, timeout=15)   # re-registered as new: it fenced itself
        back = s.servers_in_registry()[s.server_key]
        reply = raw_call(s.victim.address, s.agent.agent_id, "get_count", s.old_epoch, s.victim.namespace)
        record = s.agent_record()
        diagnosis = (f"old server back in the registry at epoch {back['epoch']} (was {s.old_epoch}) hosting "
                     f"{s.victim.info().agents} agent(s); a call at the old epoch got "
                     f"{pb.ReplyStatus.Name(reply.status)}; the agent's record points to "
                     f"{record.get('address')} (the new host is {s.survivor.address})")
        print(f"netns reconnect: {diagnosis}", file=sys.stderr)
        assert s.agent.reply(Msg("u", "after")).content["count"] == 4      # the owner is not confused
        assert s.agent.server == s.survivor.address
        assert reply.status in (pb.STALE_EPOCH, pb.UNKNOWN_AGENT), diagnosis
        assert record.get("address") == s.survivor.address, diagnosis
    except BaseException:
        s.dump_logs()
        raise
