"""Capped exponential backoff with jitter (marketdata.backoff)."""

from __future__ import annotations

import random

from marketdata.backoff import Backoff


def test_backoff_doubles_to_the_cap_with_jitter_and_resets() -> None:
    b = Backoff(initial=0.1, cap=5.0, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    ceilings = [min(5.0, 0.1 * 2**i) for i in range(12)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings)), delays
    assert max(delays) <= 5.0 and delays[-1] >= 2.5
    assert len(set(delays)) == len(delays), "jitter should make delays differ"
    b.reset()
    assert b.next() <= 0.1
