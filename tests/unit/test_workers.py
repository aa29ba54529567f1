"""`marketdata bridge --workers N`: the counters of several workers summed into one /metrics
(bridge.worker_stats, pure; bridge.metrics.Board, a directory), the worker count, the flag."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bridge import worker_stats
from bridge.metrics import Board, Gauges, Metrics, Stats
from bridge.workers import worker_count
from marketdata import cli
from marketdata.settings import BridgeSettings


def _stats(out: int, refused: int = 0, latencies: tuple[float, ...] = ()) -> Stats:
    stats = Stats()
    stats.messages_out = out
    stats.refusals["rate_limit"] = refused
    for seconds in latencies:
        stats.latency.observe(seconds)
    return stats


def _snap(worker: int, out: int, sockets: int, live: bool = True, **kw: object) -> worker_stats.Snapshot:
    return worker_stats.snapshot(worker, _stats(out, **kw), Gauges(sockets, 2, live, True))  # type: ignore[arg-type]


# -- the pure sum ---------------------------------------------------------------------


def test_counters_sum_gauges_sum_levels_and_flags_hold_only_when_every_worker_says_so() -> None:
    a = _snap(1, out=10, sockets=3, refused=1, latencies=(0.0002, 0.003))
    b = _snap(2, out=5, sockets=4, live=False, refused=2, latencies=(0.003,))
    merged = worker_stats.merge([a, b], worker_stats.Retired({}))
    stats = worker_stats.fill(Stats(), merged.counters)
    assert stats.messages_out == 15 and stats.refusals["rate_limit"] == 3
    assert stats.latency.count == 3 and stats.latency.total == pytest.approx(0.0062)
    assert stats.latency.cumulative()[3] == ("0.005", 3)  # buckets add up, bucket by bucket
    assert merged.gauges == {"sockets": 7, "subscriptions": 4, "feed_live": False, "redis_up": True}
    assert merged.sockets_by_worker == {1: 3, 2: 4}


def test_a_dead_workers_counts_stay_in_the_sum_but_its_sockets_leave_it() -> None:
    dead = _snap(1, out=100, sockets=9)
    retired = worker_stats.retire(worker_stats.Retired({}), "live-1-1.json", dead)
    restarted = _snap(1, out=2, sockets=1)
    merged = worker_stats.merge([restarted], retired)
    assert merged.counters["messages_out"] == 102, "the total went backwards: Prometheus would read a counter reset"
    assert merged.gauges["sockets"] == 1
    assert worker_stats.retire(retired, "live-1-1.json", dead) is retired, "a file folded twice counts twice"


def test_fields_one_side_does_not_know_count_as_zero() -> None:
    """A counter added to Stats sums without a change to the aggregation (and a snapshot of an
    older worker without it reads as zero)."""
    total = worker_stats.add({"messages_out": 1}, {"messages_out": 2, "books_rejected": 4, "refusals": {"origin": 1}})
    assert total == {"messages_out": 3, "books_rejected": 4, "refusals": {"origin": 1}}
    assert worker_stats.add(total, {"refusals": {"origin": 2, "rate_limit": 1}})["refusals"] == {"origin": 3, "rate_limit": 1}


def test_merging_nothing_is_an_idle_bridge() -> None:
    merged = worker_stats.merge([], worker_stats.Retired({}))
    assert (merged.counters, merged.gauges, merged.sockets_by_worker) == ({}, {}, {})


# -- the board and the rendered page ---------------------------------------------------


def _worker_metrics(board: Board, worker: int, out: int, sockets: int) -> Metrics:
    metrics = Metrics(_stats(out), lambda: Gauges(sockets, 1, True, True))
    metrics.share(board, worker, Board.live_name(worker, 1))
    metrics.publish()
    return metrics


def _families(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))


def test_any_workers_metrics_show_every_workers_sum_under_the_same_names(tmp_path: Path) -> None:
    board = Board(tmp_path)
    one = _worker_metrics(board, 1, out=7, sockets=3)
    _worker_metrics(board, 2, out=5, sockets=4)
    text = one.render().decode()
    assert "bridge_messages_out_total 12.0" in text and "bridge_sockets_open 7.0" in text
    assert 'bridge_worker_sockets_open{worker="1"} 3.0' in text and 'bridge_worker_sockets_open{worker="2"} 4.0' in text
    alone = Metrics(Stats(), lambda: Gauges(0, 0, False, False)).render().decode()
    assert _families(text) - _families(alone) == {"bridge_worker_sockets_open"}, "a family of one bridge was renamed or lost"


def test_the_scraped_worker_counts_itself_as_of_the_scrape(tmp_path: Path) -> None:
    board = Board(tmp_path)
    one = _worker_metrics(board, 1, out=7, sockets=3)
    one.stats.messages_out += 1  # after its last publish
    assert "bridge_messages_out_total 8.0" in one.render().decode()


def test_retiring_a_dead_worker_keeps_its_counts_once_and_removes_its_file(tmp_path: Path) -> None:
    board = Board(tmp_path)
    one = _worker_metrics(board, 1, out=7, sockets=3)
    _worker_metrics(board, 2, out=5, sockets=4)
    board.retire(Board.live_name(2, 1))
    board.retire(Board.live_name(2, 1))
    assert sorted(os.listdir(tmp_path)) == ["live-1-1.json", "retired.json"]
    text = one.render().decode()
    assert "bridge_messages_out_total 12.0" in text and "bridge_sockets_open 3.0" in text
    assert 'worker="2"' not in text


# -- how many, and the flag -----------------------------------------------------------


def test_zero_workers_means_one_per_core_this_process_may_use() -> None:
    assert worker_count(3) == 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert worker_count(0) == cores


def test_the_flag_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MD_BRIDGE_WORKERS", raising=False)
    parser = cli.build_parser()
    assert parser.parse_args(["bridge"]).workers == BridgeSettings().workers == 1
    assert parser.parse_args(["bridge", "--workers", "0"]).workers == 0
    monkeypatch.setenv("MD_BRIDGE_WORKERS", "4")
    assert cli.build_parser().parse_args(["bridge"]).workers == 4
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["bridge", "--workers", "-1"])
    assert info.value.code == 2
