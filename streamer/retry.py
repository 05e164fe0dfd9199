"""The one retry policy: exponential backoff with full jitter, clock and RNG injected."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import TransferError, is_retryable

log = logging.getLogger(__name__)
T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry one request.

    Attributes:
        max_attempts: total attempts, the first included.
        base_delay: delay before the second attempt (seconds), doubled each time.
        max_delay: cap on one delay.
    """

    max_attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter delay after failed attempt number ``attempt`` (1-based)."""
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return rng.uniform(0, cap)


class Retrier:
    """Runs a request under a :class:`RetryPolicy`.

    ``sleep`` and ``rng`` are injected so tests can run the schedule without waiting.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.retries = 0  # total retries made, for reports and metrics

    async def run(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Call ``fn`` until it succeeds, fails for good, or the attempts run out.

        Raises:
            TransferError: every attempt failed with a retryable error.
            Exception: the first non-retryable error, unchanged.
        """
        attempt = 1
        while True:
            try:
                return await fn()
            except Exception as e:
                if not is_retryable(e):
                    raise
                if attempt >= self.policy.max_attempts:
                    raise TransferError(what, attempts=attempt, last=e) from e
                delay = self.policy.delay(attempt, self._rng)
                log.debug("retrying %s in %.2fs after attempt %d: %s", what, delay, attempt, e)
                self.retries += 1
                attempt += 1
                await self._sleep(delay)
