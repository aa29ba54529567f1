"""The load test's parent (marketdata.loadtest.runner), its pure parts: where each socket goes, and
which worker opens it. Whole runs against a real bridge are in tests/e2e/test_loadtest.py."""

from __future__ import annotations

import pytest

from marketdata.loadtest.measurement import Plan
from marketdata.loadtest.runner import (
    http_base,
    measure,
    plan_workers,
    socket_url,
    ws_base,
)


def test_socket_urls_per_protocol() -> None:
    assert socket_url("http://h:8000/", "single", "BTC-USD") == "ws://h:8000/ws/market_data/BTC-USD"
    assert socket_url("https://h/base", "single", "A/B") == "wss://h/base/ws/market_data/A%2FB"
    assert socket_url("ws://h:1", "multi", "BTC-USD") == "ws://h:1/ws"
    assert socket_url("http://h:1", "socketio", "BTC-USD") == "ws://h:1/socket.io/?EIO=4&transport=websocket"
    assert ws_base("https://h:1/x/") == "wss://h:1/x" and http_base("wss://h:1/x/") == "https://h:1/x"
    assert socket_url("http://h:8000/", "single", "BTC-USD", deltas=True) == "ws://h:8000/ws/market_data/BTC-USD?deltas=1"
    assert socket_url("ws://h:1", "multi", "BTC-USD", deltas=True) == "ws://h:1/ws", "the subscribe asks for them"


def test_delta_plans_reach_the_workers() -> None:
    plan = Plan(("http://a:1",), ("X",), clients=4, duration=1.0, deltas=True, verify_every=3)
    workers = plan_workers(plan, 2, b"[]")
    assert all(w.deltas and w.verify_every == 3 and w.reference == b"[]" for w in workers)
    assert workers[0].targets[0].url == "ws://a:1/ws/market_data/X?deltas=1"


def test_clients_round_robin_over_instruments_and_urls_then_workers() -> None:
    plan = Plan(("http://a:1", "http://b:2"), ("BTC-USD", "ETH-USD", "AAPL"), clients=7, duration=1.0)
    workers = plan_workers(plan, 3)
    assert [w.index for w in workers] == [0, 1, 2]
    assert [len(w.targets) for w in workers] == [3, 2, 2]
    assert [(t.url, t.instrument) for t in workers[0].targets] == [
        ("ws://a:1/ws/market_data/BTC-USD", "BTC-USD"),  # client 0
        ("ws://b:2/ws/market_data/BTC-USD", "BTC-USD"),  # client 3
        ("ws://a:1/ws/market_data/BTC-USD", "BTC-USD"),  # client 6
    ]
    assert all(w.protocol == "single" and w.stalled == 0 for w in workers)


def test_stalled_clients_come_first_in_their_worker() -> None:
    plan = Plan(("http://a:1",), ("X", "Y"), clients=5, duration=1.0, stalled=3)
    workers = plan_workers(plan, 2)
    assert [w.stalled for w in workers] == [2, 1]
    assert [t.instrument for t in workers[0].targets] == ["X", "X", "X"]  # clients 0, 2 stalled, then 4
    assert [t.instrument for t in workers[1].targets] == ["Y", "Y"]  # client 1 stalled, then 3


def test_no_more_workers_than_clients() -> None:
    plan = Plan(("http://a:1",), ("X",), clients=2, duration=1.0)
    assert len(plan_workers(plan, 8)) == 2


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        (Plan(("http://a:1",), ("X",), clients=1, duration=1.0, protocol="carrier-pigeon"), "unknown protocol"),
        (Plan((), ("X",), clients=1, duration=1.0), "at least one URL"),
        (Plan(("http://a:1",), (), clients=1, duration=1.0), "at least one URL and one instrument"),
    ],
)
def test_a_bad_plan_is_refused_before_any_worker_starts(plan: Plan, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        measure(plan)
