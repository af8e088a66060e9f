"""AgentScope's distributed debate, without an LLM: three agents on agent servers talk through a msghub.

Each participant lives on a server (child servers of this process, or the
registry's when AGENTMESH_REGISTRY is set); a hub broadcasts every reply
server to server, so each speaker answers the last thing it heard. Code
written for AgentScope's example runs after renaming the package; only the
agents' reply is a rule instead of a model call.

    python examples/debate/debate.py [--rounds 3]
"""
from __future__ import annotations

import argparse

import agentmesh
from agentmesh.agents import AgentBase
from agentmesh.message import Msg
from agentmesh.msghub import msghub

ANNOUNCEMENT = Msg("Moderator", "Topic: should agents run on many machines? Pro argues yes, Con no, "
                                "the Judge sums up after each round.", role="system")


class Debater(AgentBase):
    """Answers the latest message it heard from someone else (its memory is what the hub delivered)."""

    def __init__(self, name: str, stance: str) -> None:
        super().__init__(name)
        self.stance = stance

    def reply(self, x=None):
        self.memory.add(x)
        heard = [m for m in self.memory.get_memory() if getattr(m, "name", self.name) != self.name]
        last = heard[-1] if heard else None
        said = sum(1 for m in self.memory.get_memory() if getattr(m, "name", None) == self.name)
        answer = (f"({self.stance}, point {said + 1}) answering {last.name}: "
                  f"\"{str(last.content)[:40]}...\"" if last else f"({self.stance}) opening")
        msg = Msg(self.name, answer, role="assistant")
        self.memory.add(msg)
        return msg


class Judge(Debater):
    """Counts what each side has said so far."""

    def reply(self, x=None):
        self.memory.add(x)
        counts: dict[str, int] = {}
        for m in self.memory.get_memory():
            if getattr(m, "name", None) in ("Pro", "Con"):
                counts[m.name] = counts.get(m.name, 0) + 1
        msg = Msg(self.name, f"so far Pro made {counts.get('Pro', 0)} point(s), Con {counts.get('Con', 0)}",
                  role="assistant")
        self.memory.add(msg)
        return msg


def main(rounds: int) -> list[str]:
    agentmesh.init()
    pro = Debater("Pro", "yes", to_dist=True)
    con = Debater("Con", "no", to_dist=True)
    judge = Judge("Judge", "neutral", to_dist=True)
    transcript, msg = [], None
    with msghub(participants=[pro, con, judge], announcement=ANNOUNCEMENT):
        for round_no in range(1, rounds + 1):
            for speaker in (pro, con, judge):
                # the previous reply goes along as input too: the hub also delivers it, and memory keeps it once
                msg = speaker(msg)
                transcript.append(f"round {round_no} {msg.name}: {msg.content}")
                print(transcript[-1], flush=True)
    agentmesh.shutdown()
    return transcript


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    main(parser.parse_args().rounds)
