"""The simulator's schedule: each instrument at its own rate, the quiet ones never visited between their events."""

from __future__ import annotations

import ast
import random
from collections import Counter
from pathlib import Path

import pytest

import marketdata.sim.schedule
from marketdata.sim.schedule import Schedule


def run(schedule: Schedule, until: float, step: float) -> Counter[int]:
    """Events handed out per instrument, calling due() every `step` seconds up to `until`."""
    got: Counter[int] = Counter()
    t = 0.0
    while t < until:
        t = min(until, t + step)
        for index, count in schedule.due(t):
            assert count >= 1
            got[index] += count
    return got


def test_schedule_imports_no_io() -> None:
    tree = ast.parse(Path(marketdata.sim.schedule.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "heapq", "collections"}, imported


def test_equal_rates_owe_the_same_events_in_listing_order() -> None:
    schedule = Schedule([20.0] * 8)
    assert schedule.due(0.049) == []
    assert schedule.due(0.05) == [(i, 1) for i in range(8)]
    assert schedule.due(0.5) == [(i, 9) for i in range(8)]
    assert schedule.next_due() == pytest.approx(0.55)


def test_every_instrument_gets_its_own_rate() -> None:
    rates = [2000.0, 20.0, 3.0, 0.5]
    got = run(Schedule(rates), until=10.0, step=0.005)
    for index, rate in enumerate(rates):
        assert abs(got[index] - rate * 10.0) <= 1, (index, got[index])


def test_the_count_does_not_depend_on_how_often_it_is_asked() -> None:
    rates = [random.Random(4).uniform(0.1, 500.0) for _ in range(50)]
    often = run(Schedule(rates), until=7.0, step=0.001)
    seldom = run(Schedule(rates), until=7.0, step=0.25)
    assert often == seldom


def test_only_the_instruments_due_are_returned() -> None:
    # 1,000 instruments, one busy: a call between the quiet ones' events touches only the busy one
    schedule = Schedule([1000.0] + [1.0] * 999)
    assert schedule.due(0.01) == [(0, 10)]
    assert schedule.due(0.5) == [(0, 490)]
    assert schedule.next_due() == pytest.approx(0.501)
    due = schedule.due(1.0)
    assert len(due) == 1000 and due[0] == (0, 500) and {count for _, count in due[1:]} == {1}


def test_a_caller_far_behind_skips_ahead_instead_of_bursting() -> None:
    schedule = Schedule([100.0, 10_000.0])
    assert schedule.due(10.0, catch_up=0.01) == [(1, 100), (0, 64)]  # 10 ms of events, or 64 at least
    assert schedule.skipped == (1000 - 64) + (100_000 - 100)
    assert schedule.next_due() == pytest.approx(10.0001), "it goes on from now, owing nothing from before"
    assert schedule.due(10.01, catch_up=0.01) == [(1, 100), (0, 1)]
    assert schedule.skipped == (1000 - 64) + (100_000 - 100)


@pytest.mark.parametrize("rates", [[1.0, 0.0], [-1.0], [float("nan")]])
def test_rates_must_be_positive(rates: list[float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        Schedule(rates)


def test_no_instrument_is_never_due() -> None:
    schedule = Schedule([])
    assert schedule.due(100.0) == [] and schedule.next_due() == float("inf")
