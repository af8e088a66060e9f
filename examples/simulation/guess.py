"""The "guess 2/3 of the average" game of AgentScope's large-scale simulation paper, without an LLM.

N participants are spread over agent servers through the registry (or child
servers of this process when AGENTMESH_REGISTRY is unset). Each round the
moderator (this process) tells every participant the last round's average;
each answers a number between 0 and 100 from a plain rule (two thirds of the
average it was told, with its own bias and a little noise), and the moderator
gathers the answers. All N calls of a round are sent at once and answered in
parallel; a participant remembers its own answers (its state moves with it if
its server dies).

    python examples/simulation/guess.py --agents 1000 --rounds 5
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import agentmesh
from agentmesh.agents import AgentBase
from agentmesh.rpc import async_func


class Participant(AgentBase):
    """A player: answers two thirds of the average it is told, shifted by its own bias."""

    def __init__(self, name: str, seed: int) -> None:
        super().__init__(name, use_memory=False)
        rng = random.Random(seed)
        self.bias = rng.uniform(-5.0, 5.0)
        self.seed = seed
        self.answers: list[float] = []

    @async_func
    def guess(self, round_no: int, average: float) -> float:
        noise = random.Random(self.seed * 1_000 + round_no).uniform(-1.0, 1.0)
        answer = min(100.0, max(0.0, 2.0 / 3.0 * average + self.bias + noise))
        self.answers.append(answer)
        return answer

    def rounds_played(self) -> int:
        return len(self.answers)


def setup(n: int) -> list:
    """N participants, placed by the registry (or child mode); returns their proxies at once."""
    return [Participant(f"p{i}", seed=i).to_dist() for i in range(n)]


def play_round(participants: list, round_no: int, average: float) -> float:
    """One round: tell everyone the average, gather every answer; the new average."""
    pending = [p.guess(round_no, average) for p in participants]
    return statistics.fmean(answer.result() for answer in pending)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    agentmesh.init()
    started = time.perf_counter()
    participants = setup(args.agents)
    print(f"{args.agents} participants placed in {time.perf_counter() - started:.2f} s", flush=True)
    average = 50.0
    for round_no in range(1, args.rounds + 1):
        started = time.perf_counter()
        average = play_round(participants, round_no, average)
        print(f"round {round_no}: average {average:.2f} ({time.perf_counter() - started:.2f} s)", flush=True)
    agentmesh.shutdown()


if __name__ == "__main__":
    main()
