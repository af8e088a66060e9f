"""Callers without credentials cost a server a small, fixed amount: floods of big bodies, handshakes and watches.

A real server with the default message limit (64 MiB) takes, from callers that
never authenticated: 16 concurrent 60 MiB CreateAgent bodies, 8 × 60 MiB
Handshake bodies, 8 × 60 MiB health checks, a few hundred handshakes at once
(good and malformed challenges) and hundreds of open health watches. Every one
is refused or answered without its body being read: the server's resident
memory grows by less than FLOOD_BOUND_MIB, and it goes on serving.
"""
from __future__ import annotations

import os
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.testing import wire as _wire
from conftest import MESH_TOKEN
from sample_agents import Echo
from test_budgets import rss_mib

FLOOD_BOUND_MIB = 100
BIG = 60 * 1024 * 1024
SERVICE = "/agentmesh.v1.AgentServer/"


class PeakWatch:
    """The highest RSS of a process while the block runs (sampled every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._done = pid, rss_mib(pid), threading.Event()

    def __enter__(self) -> "PeakWatch":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib(self.pid))


def in_parallel(count: int, work) -> list:
    results: list = [None] * count

    def run(i: int) -> None:
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def big_unary(address: str, method: str, body: bytes, metadata=()) -> str:
    """Send body as method's request on a channel of its own; the status code's name."""
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 2 * BIG)]) as channel:
        try:
            channel.unary_unary(method)(body, metadata=metadata, timeout=30)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name


def test_unauthenticated_floods_cost_the_server_little_and_it_goes_on_serving(servers, runtime):
    server = servers(capacity=8, token=MESH_TOKEN)
    runtime.configure(token=MESH_TOKEN)
    before = Echo("before").to_dist(host="127.0.0.1", port=server.port)
    assert before.ping(1) == 1
    body = os.urandom(1024) * (BIG // 1024)
    start = rss_mib(server.pid)
    with PeakWatch(server.pid) as watch:
        creates = in_parallel(16, lambda i: big_unary(server.address, SERVICE + "CreateAgent", body,
                                                      _wire.call_metadata()))
        handshakes = in_parallel(8, lambda i: big_unary(server.address, SERVICE + "Handshake", body,
                                                        _wire.call_metadata()))
        checks = in_parallel(8, lambda i: big_unary(server.address, "/grpc.health.v1.Health/Check", body))
        assert set(creates) == {"UNAUTHENTICATED"}, creates
        assert set(handshakes) == {"UNAUTHENTICATED"}, handshakes    # no nonce in its metadata
        assert set(checks) == {"OK"}, checks                          # answered, body unread

        # A few hundred handshakes at once, well-formed and not, each on its own channel.
        def handshake(i: int) -> str:
            with grpc.insecure_channel(server.address) as channel:
                try:
                    _wire.handshake(channel, address=server.address if i % 2 else f"nowhere-{i}.invalid:1")
                    return "OK"
                except grpc.RpcError as exc:
                    return exc.code().name
        answers = in_parallel(300, handshake)
        assert set(answers) <= {"OK", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}, set(answers)
        assert answers.count("OK") >= 100

        # Open health watches: the first ones stream, the rest beyond the cap are refused.
        with grpc.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watches = [stub.Watch(health_pb2.HealthCheckRequest(service=body[:100].hex()), timeout=30)
                       for _ in range(400)]
            firsts = []
            for watch_call in watches:
                try:
                    firsts.append(next(watch_call).status)
                except grpc.RpcError as exc:
                    firsts.append(exc.code().name)
            for watch_call in watches:
                watch_call.cancel()
        assert firsts.count(health_pb2.HealthCheckResponse.SERVING) == 256, set(firsts)
        assert firsts.count("RESOURCE_EXHAUSTED") == 400 - 256
    grown = watch.peak - start
    assert grown < FLOOD_BOUND_MIB, f"the server's RSS grew {grown:.0f} MiB under the flood ({start:.0f} MiB before)"
    print(f"\nunauthenticated flood: server RSS {start:.0f} MiB before, peak {watch.peak:.0f} MiB "
          f"(+{grown:.0f} MiB)")
    assert before.ping(2) == 2      # the server goes on serving its callers
    assert Echo("after").to_dist(host="127.0.0.1", port=server.port).ping(3) == 3
