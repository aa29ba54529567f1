"""The load generator's latency histogram: buckets, percentiles, merging."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from marketdata.loadtest import latency


@given(st.integers(min_value=0, max_value=latency.MAX_US))
def test_a_value_lies_in_its_bucket_and_buckets_are_narrow(us: int) -> None:
    i = latency.bucket(us)
    assert 0 <= i < latency.SIZE
    assert us <= latency.upper(i)
    assert i == 0 or latency.upper(i - 1) < us, "the bucket below must end before the value"
    assert latency.upper(i) - us <= max(1, us // 32), "a bucket is at most 1/32 of its values wide"


def test_out_of_range_values_are_clamped() -> None:
    assert latency.bucket(-5) == 0
    assert latency.bucket(10**12) == latency.bucket(latency.MAX_US)


def test_percentiles_of_a_known_distribution() -> None:
    h = latency.new()
    for us in range(1, 1001):  # 1 µs .. 1 ms, uniform
        h[latency.bucket(us)] += 1
    assert latency.percentile(h, 0.5) in range(500, 516)
    assert latency.percentile(h, 0.99) in range(990, 1022)
    s = latency.summarize(h, 1000)
    assert s.count == 1000 and s.max == 1.0 and s.p99 <= s.max


def test_merge_and_subtract_are_inverse() -> None:
    a, b = latency.new(), latency.new()
    a[3], a[100], b[100], b[700] = 2, 5, 1, 4
    total = latency.merged([a, b])
    assert total[100] == 6 and total[700] == 4
    assert latency.subtract(total, b) == a


def test_an_empty_histogram_has_zero_percentiles() -> None:
    assert latency.summarize(latency.new(), 0) == latency.Summary(0, 0.0, 0.0, 0.0, 0.0)
