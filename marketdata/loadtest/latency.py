"""Latency histograms: log-linear buckets of microseconds, cheap to fill and to merge.

A value of v µs falls in bucket v while v < 64; above that, in one of 32 buckets per
power of two, so a bucket is never wider than 1/32 (about 3 %) of the values in it
and any latency up to 35 minutes fits in 864 buckets. Counts are plain lists of
ints: the load generator's processes fill them on the hot path and the parent adds
them up. Pure code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SUB_BITS = 5
LINEAR = 1 << (SUB_BITS + 1)  # values below this have a bucket each
MAX_US = (1 << 31) - 1  # larger values are counted as this
SIZE = 1024  # buckets in a histogram; bucket(MAX_US) is 863


def bucket(us: int) -> int:
    """The bucket of a latency in µs (negative counts as 0, huge as MAX_US).

    The load generator inlines this computation on its per-message path.
    """
    if us < LINEAR:
        return us if us > 0 else 0
    if us > MAX_US:
        us = MAX_US
    shift = us.bit_length() - (SUB_BITS + 1)
    return (shift << SUB_BITS) + (us >> shift)


def upper(index: int) -> int:
    """The largest value (µs) that falls in bucket `index`."""
    if index < LINEAR:
        return index
    shift = (index >> SUB_BITS) - 1
    mantissa = index - (shift << SUB_BITS)
    return ((mantissa + 1) << shift) - 1


def new() -> list[int]:
    return [0] * SIZE


def add(into: list[int], other: Sequence[int]) -> None:
    """Add `other`'s counts into `into`."""
    for i, n in enumerate(other):
        if n:
            into[i] += n


def subtract(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Counts in `a` that are not in `b` (b an earlier state of the same histogram)."""
    return [x - y for x, y in zip(a, b)]


def merged(histograms: Iterable[Sequence[int]]) -> list[int]:
    total = new()
    for h in histograms:
        add(total, h)
    return total


def percentile(counts: Sequence[int], q: float) -> int:
    """The value (µs, the upper edge of its bucket) below which a fraction `q` of the counts lie."""
    total = sum(counts)
    if total == 0:
        return 0
    rank = max(1, -(-int(q * total * 1_000_000) // 1_000_000))  # ceil without float drift
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return upper(i)
    return upper(len(counts) - 1)


@dataclass(frozen=True, slots=True)
class Summary:
    """Percentiles of one histogram, in milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    def as_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99, "max_ms": self.max}


def summarize(counts: Sequence[int], max_us: int) -> Summary:
    """p50/p90/p99 from the buckets (never above the exact maximum), and the maximum."""

    def ms(us: int) -> float:
        return round(min(us, max_us) / 1000, 3)

    return Summary(sum(counts), ms(percentile(counts, 0.50)), ms(percentile(counts, 0.90)),
                   ms(percentile(counts, 0.99)), round(max_us / 1000, 3))
