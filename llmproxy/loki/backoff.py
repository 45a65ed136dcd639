"""Retry timing as a value: exponential from ``min``, capped at ``max``, plus up to ``jitter``."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Backoff:
    min: float = 0.1
    max: float = 10.0
    retries: int = 5
    jitter: float = 0.25  # spreads retries of many workers and machines (no thundering herd)

    def base(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (0-based) without jitter: 100 ms, 200 ms, 400 ms…"""
        return min(self.max, self.min * (2 ** attempt))

    def delay(self, attempt: int, rand=random.random) -> float:
        base = self.base(attempt)
        return base + base * self.jitter * rand()

    def budget(self) -> float:
        """The longest all retries of one batch can wait."""
        return sum(self.base(i) * (1 + self.jitter) for i in range(self.retries))


def parse_retry_after(value: str | None, cap: float) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, min(seconds, cap))
