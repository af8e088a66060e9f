"""How often to wait again for a result: AgentScope's retry strategies, under the same names.

``to_dist(..., max_timeout_seconds=T, retry_strategy=S)``: one wait for a
result lasts at most T seconds; when it runs out, S decides whether and when
to wait again, and raises ``TimeoutError`` once it gives up. Without either
option a result is waited for as long as its call runs.
"""
from __future__ import annotations

import abc
import logging
import random
import time
from typing import Any, Callable

log = logging.getLogger("agentmesh.rpc")

__all__ = ["RetryBase", "RetryFixedTimes", "RetryExponential", "retry_strategy_of"]


class RetryBase(abc.ABC):
    """A retry strategy: ``retry(func, *args, **kwargs)`` calls func until it succeeds or the strategy gives up."""

    max_retries: int

    @abc.abstractmethod
    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before retry number attempt (1 for the first retry)."""

    def retry(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """func(*args, **kwargs), again after each failure; TimeoutError once max_retries retries failed.

        ``expect_exception_type=`` (default Exception) names what counts as a
        failure; anything else is raised at once.
        """
        expected = kwargs.pop("expect_exception_type", Exception)
        attempt = 0
        while True:
            try:
                return func(*args, **kwargs)
            except expected as exc:
                attempt += 1
                if attempt > self.max_retries:
                    raise TimeoutError(f"gave up after {self.max_retries} retries: {exc}") from exc
                pause = self.delay_before(attempt)
                log.debug("attempt %d failed (%s); retrying in %.2f s", attempt, exc, pause)
                time.sleep(pause)

    def __call__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.retry(func, *args, **kwargs)

    @classmethod
    def load_dict(cls, data: dict[str, Any]) -> "RetryBase":
        """A strategy from its dict form: ``{"type": "fixed" | "exponential", ...its arguments}``."""
        options = dict(data)
        kind = options.pop("type", None)
        kinds: dict[str, type[RetryBase]] = {"fixed": RetryFixedTimes, "exponential": RetryExponential}
        if kind not in kinds:
            raise NotImplementedError(f"unknown retry strategy type {kind!r}: use 'fixed' or 'exponential'")
        try:
            return kinds[kind](**options)
        except TypeError as exc:
            raise ValueError(f"retry strategy {data!r}: {exc}") from None


class RetryFixedTimes(RetryBase):
    """Up to max_retries retries, about delay seconds apart (0.5 to 1.5 times delay, so callers spread out)."""

    def __init__(self, max_retries: int = 10, delay: float = 5) -> None:
        _check(max_retries, delay)
        self.max_retries = int(max_retries)
        self.delay = float(delay)

    def delay_before(self, attempt: int) -> float:
        return (random.random() + 0.5) * self.delay

    def __repr__(self) -> str:
        return f"RetryFixedTimes(max_retries={self.max_retries}, delay={self.delay:g})"


class RetryExponential(RetryBase):
    """Up to max_retries retries, the pause doubling from base_delay (with the same jitter), never above max_delay.

    The cap comes after the jitter, as in AgentScope: a pause is at most max_delay, not 1.5 times it.
    """

    def __init__(self, max_retries: int = 10, base_delay: float = 5, max_delay: float = 300) -> None:
        _check(max_retries, base_delay)
        if max_delay < base_delay:
            raise ValueError(f"max_delay ({max_delay}) is below base_delay ({base_delay})")
        self.max_retries = int(max_retries)
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)

    def delay_before(self, attempt: int) -> float:
        return min((random.random() + 0.5) * self.base_delay * 2 ** (attempt - 1), self.max_delay)

    def __repr__(self) -> str:
        return (f"RetryExponential(max_retries={self.max_retries}, base_delay={self.base_delay:g}, "
                f"max_delay={self.max_delay:g})")


def _check(max_retries: Any, delay: Any) -> None:
    if not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int of at least 0, not {max_retries!r}")
    if not isinstance(delay, (int, float)) or delay < 0:
        raise ValueError(f"a retry delay must be a number of seconds of at least 0, not {delay!r}")


def retry_strategy_of(value: "RetryBase | dict[str, Any] | None") -> "RetryBase | None":
    """The strategy a ``retry_strategy=`` option names (an instance, its dict form, or None)."""
    if value is None or isinstance(value, RetryBase):
        return value
    if isinstance(value, dict):
        return RetryBase.load_dict(value)
    raise TypeError(f"retry_strategy must be a RetryBase or its dict form, not {type(value).__name__}")
