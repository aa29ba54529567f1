"""Capped exponential backoff with jitter: how every reconnect loop here waits between attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """The n-th delay lies in [d/2, d] with d = min(cap, initial * 2**n): capped, half of it jittered.

    Jitter keeps a fleet of bridges or ingestors from reconnecting in lock step after
    a shared outage. `reset()` after a success starts the next outage at `initial`.
    """

    initial: float = 0.1
    cap: float = 5.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return ceiling / 2 + self.rng.random() * ceiling / 2

    def reset(self) -> None:
        self.attempts = 0
