"""What `marketdata loadtest` shows (marketdata.loadtest.report): live rates from each worker's own
clock whenever the parent looks, and the summary."""

from __future__ import annotations

import pytest
from rich.console import Console

from marketdata.loadtest import latency
from marketdata.loadtest.measurement import Plan, Report, Result, Totals
from marketdata.loadtest.report import RecentRates, print_summary


def report(worker: int, window: float, books: int, cpu: float) -> Report:
    return Report(worker=worker, phase="running", window=window, books=books, cpu=cpu)


def test_the_first_look_shows_no_rate_rather_than_a_made_up_one() -> None:
    rates = RecentRates(processes=2)
    assert rates.update(Totals.of([report(0, 0.5, 400, 0.01), report(1, 0.5, 400, 0.01)])) == (0.0, 0.0)


def test_staggered_reports_do_not_inflate_the_rate() -> None:
    """Two workers at 10k msgs/s each, reporting every 0.5 s, half a period apart."""
    rates = RecentRates(processes=2)
    def at(worker: int, window: float) -> Report:
        return report(worker, window, round(10_000 * window), 0.2 * window)

    rates.update(Totals.of([at(0, 0.5), at(1, 0.25)]))
    seen = []
    # The parent looks every 0.5 s; between two looks worker 1 sends no report once, then two.
    for w0, w1 in ((1.0, 0.75), (1.5, 1.25), (2.0, 1.25), (2.5, 2.25), (3.0, 2.75)):
        seen.append(rates.update(Totals.of([at(0, w0), at(1, w1)])))
    for rate, share in seen:
        assert rate == pytest.approx(20_000)
        assert share == pytest.approx(0.2)  # 0.2 s of CPU a second per worker, over 2 cores


def test_a_worker_without_a_new_report_keeps_its_last_rate() -> None:
    rates = RecentRates(processes=2)
    rates.update(Totals.of([report(0, 1.0, 1_000, 0.0), report(1, 1.0, 1_000, 0.0)]))
    rates.update(Totals.of([report(0, 2.0, 4_000, 0.0), report(1, 2.0, 2_000, 0.0)]))
    rate, _ = rates.update(Totals.of([report(0, 3.0, 7_000, 0.0), report(1, 2.0, 2_000, 0.0)]))
    assert rate == pytest.approx(3_000 + 1_000)


def summary_of(result: Result) -> str:
    console = Console(width=200, record=True, force_terminal=False, color_system=None)
    print_summary(result, console)
    return " ".join(console.export_text().replace("│", " ").split())


def test_the_summary_names_clients_rate_latency_and_sequence() -> None:
    final = Report(worker=0, phase="final", window=2.0, cpu=0.5, attempted=4, connected=4, open=3,
                   closed={"1008 slow consumer": 1}, books=2000, others=4, bytes=400_000, conflated=7,
                   per_client=[400, 500, 600])
    for us in (900, 1100):
        final.hist_ts[latency.bucket(us)] += 1000
        final.hist_pts[latency.bucket(us // 2)] += 1000
    final.max_ts, final.max_pts = 1100, 550
    plan = Plan(("http://127.0.0.1:8000",), ("BTC-USD",), clients=4, duration=2.0)
    text = summary_of(Result(plan, 1, Totals.of([final])))
    assert "4 connected of 4 (single), 0 failed to connect, 1 closed by the server, 3 open at the end" in text
    assert "1,000 msgs/s 0.2 MB/s (2,000 book messages, 4 others)" in text
    assert "latency from ts p50 0.91 ms p90 1.10 ms p99 1.10 ms max 1.10 ms" in text  # bucket edges, capped at the max
    assert "latency from pts p50 0.46 ms" in text
    assert "250.0 µs CPU per message, busiest at 25% of a core; ceiling ≈ 4,000 msgs/s" in text
    assert "min 400 median 500 max 600 messages" in text
    assert "0 regressions (errors) 7 seqs skipped" in text
    assert "closed by the server: 1 x 1008 slow consumer" in text
    assert "saturated" not in text
    busy = Report(worker=0, phase="final", window=1.0, cpu=0.95, books=10)
    assert "the load generator was saturated" in summary_of(Result(plan, 1, Totals.of([busy])))
