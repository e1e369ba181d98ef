"""How a store retries an operation that failed for a transient reason (a dropped
connection, a busy database): the policy every backend's ``_retrying`` follows."""

from __future__ import annotations

import random
from dataclasses import dataclass

from shoal.errors import ConfigError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a store retries an operation that failed for a transient reason.

    ``attempts`` counts every try (4 = one try and three retries); delays grow
    exponentially from ``base_delay_s`` to ``max_delay_s``; each wait is drawn from
    [cap/2, cap] so many writers recovering together do not retry in step.
    """

    attempts: int = 4
    base_delay_s: float = 0.05
    max_delay_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ConfigError("RetryPolicy delays must be >= 0")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure."""
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** (failures - 1)))
        return random.uniform(cap / 2, cap)
