"""Pipelines (AgentScope's names): operators run one after the other, each on the previous one's output.

Over proxies nothing waits: each call returns its placeholder at once and the
next agent's server fetches it, so a pipeline of remote agents returns the
last one's placeholder before the first has answered.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["SequentialPipeline", "sequential_pipeline"]


def sequential_pipeline(operators: Sequence[Callable[[Any], Any]], x: Any = None) -> Any:
    """``operators[0](x)``, then each next operator on the output of the one before; the last output.

    Operators are agents, proxies, pipelines or any callable of one message.
    ValueError when there are none.
    """
    if len(operators) == 0:
        raise ValueError("No operators provided.")
    msg = operators[0](x)
    for operator in operators[1:]:
        msg = operator(msg)
    return msg


class SequentialPipeline:
    """A reusable sequential pipeline: ``SequentialPipeline([a, b, c])(x)`` is ``c(b(a(x)))``."""

    def __init__(self, operators: Sequence[Callable[[Any], Any]]) -> None:
        self.operators = operators
        self.participants = list(operators)

    def __call__(self, x: Any = None) -> Any:
        return sequential_pipeline(operators=self.operators, x=x)
