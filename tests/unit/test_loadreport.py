"""The load test's live rates: from each worker's own clock, whenever the parent looks."""

from __future__ import annotations

import pytest

from marketdata.loadtest.generator import Report
from marketdata.loadtest.report import RecentRates
from marketdata.loadtest.runner import Totals


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
