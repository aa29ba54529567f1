"""A load test's values (marketdata.loadtest.measurement): workers' reports added up, and the result."""

from __future__ import annotations

import pytest

from marketdata.loadtest import latency
from marketdata.loadtest.measurement import Plan, Report, Result, Totals

PLAN = Plan(("http://a:1", "http://b:2"), ("BTC-USD", "ETH-USD"), clients=6, duration=5.0, warmup=0.5)


def test_totals_add_counters_merge_reasons_and_keep_each_workers_clock() -> None:
    a = Report(worker=0, phase="running", window=2.0, cpu=0.5, attempted=3, connected=3, open=2, books=4000,
               bytes=1000, regressions=1, failure_reasons={"refused": 1}, closed={"1008 slow": 1},
               error_samples=["e1", "e2", "e3"], errors=3, max_ts=700, per_client=[1, 2])
    b = Report(worker=1, phase="running", window=1.0, cpu=0.9, attempted=3, connected=2, open=2, books=3000,
               bytes=500, connect_failures=1, failure_reasons={"refused": 2, "timeout": 1},
               error_samples=["e4", "e5", "e6"], errors=3, max_ts=900, per_client=[3])
    a.hist_ts[latency.bucket(100)] = 5
    b.hist_ts[latency.bucket(100)] = 2
    t = Totals.of([a, b])
    assert (t.attempted, t.connected, t.open, t.books, t.bytes, t.regressions, t.errors) == (6, 5, 4, 7000, 1500, 1, 6)
    assert t.failure_reasons == {"refused": 3, "timeout": 1} and t.closed == {"1008 slow": 1}
    assert t.error_samples == ["e1", "e2", "e3", "e4", "e5"], "five samples at most"
    assert t.hist_ts[latency.bucket(100)] == 7 and t.max_ts == 900
    assert t.window == 2.0 and t.cpu == pytest.approx(1.4)
    # rates from each worker's own window: 4000/2 + 3000/1, not 7000 over the longest window
    assert t.rate == pytest.approx(5000) and t.byte_rate == pytest.approx(1000)
    assert t.busiest_cpu == pytest.approx(0.9)
    assert t.marks == {0: (2.0, 4000, 0.5), 1: (1.0, 3000, 0.9)}
    assert sorted(t.per_client) == [1, 2, 3]
    assert a.books == 4000 and a.hist_ts[latency.bucket(100)] == 5, "adding up leaves the reports as they were"


def test_result_cost_ceiling_and_saturation() -> None:
    totals = Totals.of([Report(worker=0, phase="final", window=1.0, cpu=0.5, books=10_000),
                        Report(worker=1, phase="final", window=1.0, cpu=0.95, books=10_000)])
    result = Result(PLAN, 2, totals)
    assert result.cpu_us_per_message == pytest.approx(72.5)  # 1.45 s of CPU over 20,000 messages
    assert result.ceiling == pytest.approx(2 * 1e6 / 72.5)
    assert result.saturated, "one worker used 95 % of a core"
    assert not Result(PLAN, 2, Totals()).saturated
    assert Result(PLAN, 2, Totals()).ceiling == 0.0


def test_the_json_summary() -> None:
    final = Report(worker=0, phase="final", window=5.0, cpu=1.0, attempted=6, connected=6, open=6, books=500,
                   per_client=[50, 90, 120, 60, 80, 100])
    final.hist_ts[latency.bucket(2000)] = 500
    final.max_ts = 2000
    out = Result(PLAN, 1, Totals.of([final]), "raised the open-files limit").as_dict()
    assert out["urls"] == ["http://a:1", "http://b:2"] and out["instruments"] == ["BTC-USD", "ETH-USD"]
    assert (out["clients"], out["connected"], out["messages"], out["messages_per_s"]) == (6, 6, 500, 100.0)
    assert out["per_client_messages"] == {"min": 50, "median": 90, "max": 120}
    assert out["latency_ts"]["count"] == 500 and out["latency_ts"]["max_ms"] == 2.0
    assert out["load_generator"]["open_files"] == "raised the open-files limit"
    assert Result(PLAN, 1, Totals()).as_dict()["per_client_messages"] is None
