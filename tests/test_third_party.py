"""Failover keeps what other agents did to an agent: their calls and the messages it observed.

The checkpoint a failover restores used to be the one that rode on the reply
to the owner's last call, so calls from other agents (and msghub broadcasts)
were rolled back. Now the server pushes the agent's creator a checkpoint after
any call someone else made, and releases that call's reply only once the push
is written.
"""
from __future__ import annotations

import os
import signal

import pytest

from agentmesh import Msg
from agentmesh._client.slot import ResultRef
from agentmesh.discovery import keys
from conftest import etcd_get_prefix, pid_alive, wait_until
from sample_agents import Echo, Prodder


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_an_agent_keeps_what_other_agents_did_to_it_across_a_failover(mesh, namespace, servers, how):
    launched = [servers(capacity=8, registry=mesh.url, namespace=namespace) for _ in range(3)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 3)
    by_address = {s.address: s for s in launched}
    box = Echo("box")
    box = box.to_dist(host="127.0.0.1", port=launched[0].port)
    for i in range(4):                                  # the owner's own calls: count 4, 4 messages heard
        assert box.reply(Msg("owner", i)).content["count"] == i + 1
    prodder = Prodder("prodder").to_dist(host="127.0.0.1", port=launched[1].port)
    assert prodder.prod(box, 2, 2) == 6                 # another agent, on another server: count 6, 8 heard
    victim = by_address[box.server]
    if how == "SIGKILL":
        os.kill(victim.pid, signal.SIGKILL)
    else:
        os.kill(victim.pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(victim.pid), timeout=30)
    assert box.get_count() == 6                          # no owner call in between: nothing rolled back
    assert box.server != victim.address
    heard = [m.content for m in box.memory.get_memory()]
    assert len(heard) == 8, heard
    assert heard[-4:] == ["prod 0", "prod 1", "note 0", "note 1"]


def test_a_call_from_another_agent_answered_before_the_kill_is_answered_again_not_run_again(mesh, namespace,
                                                                                             servers):
    """The checkpoint pushed to the creator carries the replies of the calls whose effects it holds; the
    agent is re-created with them, so its new server answers a replay (or a fetch) of such a call from the
    stored reply instead of running it a second time (or calling it unknown)."""
    from agentmesh import _codec

    launched = [servers(capacity=8, registry=mesh.url, namespace=namespace) for _ in range(3)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 3)
    by_address = {s.address: s for s in launched}
    box = Echo("box").to_dist(host="127.0.0.1", port=launched[0].port)
    prodder = Prodder("prodder").to_dist(host="127.0.0.1", port=launched[1].port)
    assert prodder.prod(box, 2, 0) == 2
    binding = box._binding
    wait_until(lambda: len(binding.checkpoint.answered) == 3)   # two replies and get_count's
    first = next(r for r in binding.checkpoint.answered
                 if r.payload and isinstance(_codec.loads(r.payload), Msg))
    assert _codec.loads(first.payload).content["count"] == 1
    victim = by_address[box.server]
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(victim.pid), timeout=30)
    assert box.get_count() == 2                     # moved, with both calls
    assert box.server != victim.address
    ref = ResultRef(binding.server_id, binding.address, binding.agent_id, first.call_id)
    again = binding.runtime.run(binding.runtime.pool.fetch(ref))
    assert again.status == 0, again.error_message    # OK: the stored reply, not "unknown or expired"
    assert _codec.loads(again.payload).content["count"] == 1
    assert box.get_count() == 2                     # and nothing ran again


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_chaos_with_half_the_calls_made_by_other_agents_loses_nothing(mesh, namespace, servers, fault):
    """Boxes and forwarding agents on three servers, half the boxes' calls made through the forwarders:
    replies, and observations; a server is killed (or stopped) every 2-3 s while four threads call; afterwards
    every box's count and memory hold every call that was answered, once: nothing rolled back (14 of 30 boxes
    lost calls before checkpoints were pushed to the creator) and nothing run twice (a call from another
    agent whose checkpoint push was written but whose reply the fault cut off was replayed at the box's new
    home and ran again, about one box in eight runs, before pushes carried the replies they release; a
    forwarder's call replayed after its own server died made its call to the box again under a new id)."""
    import random
    import threading
    import time

    from sample_agents import Forwarding

    spare = [servers(capacity=64, registry=mesh.url, namespace=namespace) for _ in range(3)]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 3)
    boxes = [Echo(f"box{i}").to_dist() for i in range(30)]
    assert all(b.get_count() == 0 for b in boxes)
    forwarders = [Forwarding(f"fwd{i}").to_dist() for i in range(4)]   # faulted too: their calls are replayed
    acked = {i: 0 for i in range(len(boxes))}      # replies (count and memory)
    noted = {i: 0 for i in range(len(boxes))}      # observations (memory only)
    failures: list[str] = []
    stop = threading.Event()

    def caller(n: int) -> None:
        mine = list(range(n, len(boxes), 4))
        rng = random.Random(n)
        while not stop.is_set():
            i = rng.choice(mine)
            try:
                draw = rng.random()
                if draw < 0.5:
                    boxes[i].reply(Msg("owner", "direct")).content
                elif draw < 0.8:
                    forwarders[n].add(boxes[i], "forwarded")
                else:
                    forwarders[n].note(boxes[i], "noted")
                    noted[i] += 1
                    continue
                acked[i] += 1
            except Exception as exc:  # noqa: BLE001 - counted as a failure, the test says which
                failures.append(f"{type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    alive, faults = list(spare), 0
    try:
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline:
            time.sleep(random.uniform(2, 3))
            victim = random.choice(alive)
            if fault == "SIGKILL":
                os.kill(victim.pid, signal.SIGKILL)
                alive.remove(victim)
                alive.append(servers(capacity=64, registry=mesh.url, namespace=namespace))
            else:
                os.kill(victim.pid, signal.SIGSTOP)
                time.sleep(3)
                os.kill(victim.pid, signal.SIGCONT)
            faults += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, failures[:5]
    counts = [b.get_count() for b in boxes]
    heard = {i: len(boxes[i].memory.get_memory()) for i in range(len(boxes))}
    print(f"\nchaos ({fault}): {sum(acked.values())} replies and {sum(noted.values())} observations answered, "
          f"{faults} faults")
    wrong = {i: (counts[i], acked[i]) for i in range(len(boxes)) if counts[i] != acked[i]}
    assert not wrong, f"(count, calls answered) of the boxes that lost a call or ran one twice: {wrong}"
    unheard = {i: (heard[i], acked[i] + noted[i]) for i in acked if heard[i] != acked[i] + noted[i]}
    assert not unheard, f"(messages in memory, messages answered) of the boxes that differ: {unheard}"


def _team_run(mesh, namespace, servers, kill_in_round_2: bool, expect: list[list] | None = None,
              ) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Five members over three servers, a msghub, three rounds of a sequential pipeline; with
    kill_in_round_2 the server of the third speaker is SIGKILLed after the second has spoken. With expect
    (the memories of a run without the kill), wait until every member holds as much before reading them."""
    from agentmesh.msghub import msghub
    from sample_agents import TeamMember

    launched = [servers(capacity=8, registry=mesh.url, namespace=namespace) for _ in range(3)]
    ports = [s.port for s in launched]
    wait_until(lambda: len(etcd_get_prefix(mesh.url, keys.servers_prefix(namespace))) == 3)
    team = [TeamMember(f"m{i}").to_dist(host="127.0.0.1", port=ports[i % 3]) for i in range(5)]
    replies: list[str] = []
    with msghub(team, announcement=Msg("host", "begin")):
        for round_ in range(3):
            x = Msg("host", f"round {round_}")
            for n, member in enumerate(team):
                x = member(x)
                replies.append(x.content)
                if kill_in_round_2 and round_ == 1 and n == 1:
                    victim = next(s for s in launched if s.address == team[2].server)
                    os.kill(victim.pid, signal.SIGKILL)
                    wait_until(lambda: not pid_alive(victim.pid))
    if expect is not None:
        for member, memory in zip(team, expect):
            wait_until(lambda: member.memory.size() >= len(memory), timeout=15)
    memories = [[(m.name, m.content) for m in member.memory.get_memory()] for member in team]
    return replies, memories


def test_a_team_in_a_msghub_loses_nothing_to_a_kill(mesh, servers, namespace, runtime):
    """Every message every member heard without the kill, it holds after it: nothing rolled back, nothing
    twice. (Broadcasts are told without waiting, so the order in which a member hears them, and so the
    counts in its replies, can differ from run to run with or without a kill: messages are compared by who
    said them.)"""
    clean_replies, clean = _team_run(mesh, namespace, servers, kill_in_round_2=False)
    runtime.configure(namespace=namespace + "-k")       # a second team, on servers of its own
    killed_replies, killed = _team_run(mesh, namespace + "-k", servers, kill_in_round_2=True, expect=clean)
    assert len(killed_replies) == len(clean_replies) == 15
    for before, after in zip(clean, killed):
        assert sorted(name for name, _ in after) == sorted(name for name, _ in before)
