"""The fault suite's own checks can fail: a forged checksum, a seq going back, an old epoch, a missed deadline."""

from __future__ import annotations

import orjson
import pytest

from bench.fault_checks import (
    ALLOWED,
    CHECKSUM,
    FORBIDDEN,
    MAX_KEPT,
    ORDER,
    OTHER,
    REQUIRED,
    Expect,
    Order,
    Verifier,
    Violations,
    Watch,
    judge,
    percentile,
)
from bench.fault_sockets import plan_sockets
from bench.fault_tap import BusTap
from marketdata import schema
from marketdata.book import OrderBook, checksum
from marketdata.instruments import DEFAULT_INSTRUMENTS

pytestmark = pytest.mark.faults

BTC = DEFAULT_INSTRUMENTS[0]


def book(seq: int, epoch: int = 1, pts: int = 1_000, bids: tuple = ((649_999, 5_312),), asks: tuple = ((650_000, 2_500),)) -> bytes:
    b = OrderBook(BTC.id, seq, epoch)
    b.reset(seq, bids, asks, epoch)
    return schema.encode_book(BTC, b, 25, ts=pts, pts=pts, checksum=checksum(bids, asks))


def test_the_verifier_proves_a_true_book_and_names_a_forged_one() -> None:
    verifier = Verifier(DEFAULT_INSTRUMENTS)
    good = verifier.book(book(7))
    assert (good.instrument, good.epoch, good.seq, good.problem) == ("BTC-USD", 1, 7, None)
    forged = orjson.loads(book(8))
    forged["bids"][0][1] = 0.5313  # one lot more than the checksum covers
    bad = verifier.book(orjson.dumps(forged))
    assert bad.problem is not None and bad.problem.startswith("bad checksum at (1, 8)")
    assert verifier.book(b'{"v":1,"type":"book"}').problem.startswith("malformed")  # type: ignore[union-attr]
    unlisted = orjson.loads(book(9))
    unlisted["instrument"] = "DOGE-USD"
    assert "unlisted instrument" in (verifier.book(orjson.dumps(unlisted)).problem or "")


def test_order_within_an_epoch_across_reconnections_and_epochs_left_behind() -> None:
    order = Order()
    assert order.check(1, 5, first_on_connection=True) is None
    assert order.check(1, 6, first_on_connection=False) is None
    assert order.check(1, 6, first_on_connection=False) == "seq 6 after seq 6 in epoch 1"
    assert order.check(1, 6, first_on_connection=True) is None, "a new connection's last value may repeat the last book"
    assert order.check(1, 4, first_on_connection=True) == "seq 4 after seq 6 in epoch 1"
    assert order.check(2, 1, first_on_connection=False) is None, "a new epoch is a reset"
    assert order.check(1, 99, first_on_connection=False) == "epoch 1 again after the reset to epoch 2"


def test_a_watch_takes_fresh_books_only_after_the_fault_and_of_a_new_epoch_when_asked() -> None:
    verifier = Verifier(DEFAULT_INSTRUMENTS)
    watch = Watch(10.0, {"BTC-USD"}, epoch_before={"BTC-USD": 1})
    watch.book(verifier.book(book(20, epoch=1, pts=5_000)), 10.1)
    assert watch.fresh_at is None, "nothing is fresh before the fault has happened (after_us)"
    watch.after_us = 4_000
    watch.book(verifier.book(book(21, epoch=1, pts=5_000)), 10.2)
    assert watch.fresh_at is None, "the old run's book does not heal a simulator restart"
    watch.book(verifier.book(book(1, epoch=2, pts=6_000)), 10.3)
    assert watch.fresh_at == 10.3


def test_judge_names_each_missed_expectation() -> None:
    watch = Watch(100.0, {"BTC-USD"}, after_us=0)
    watch.feed(False, "no heartbeat from the ingestor", 102.5)
    watch.book(Verifier(DEFAULT_INSTRUMENTS).book(book(3)), 108.0)
    out = judge("s001", watch, Expect(REQUIRED, 5.0, "the simulator back"), back=102.0, live=True)
    assert out.stale_s == 2.5 and out.heal_s == 8.0
    assert out.problems == (
        "s001: stale signalled 2.50 s after the fault (feed stale (no heartbeat from the ingestor)), over 2 s",
        "s001: fresh books 6.00 s after the simulator back, over 5 s",
    )
    quiet = Watch(100.0, {"ETH-USD"}, after_us=0)
    quiet.closed("dropped without a close frame by bridge-1", 100.2)
    problems = judge("s002", quiet, Expect(FORBIDDEN, 2.0, "the kill"), back=100.0, live=None).problems
    assert problems == (
        "s002: dropped without a close frame by bridge-1 0.20 s after the fault, where sockets stay open",
        "s002: no fresh book of ETH-USD (within 2 s of the kill or ever after)",
        "s002: the feed is not live again (last state: none yet)",
    )
    closing = Expect(REQUIRED, 5.0, "bridge-1 back", closing=True)
    assert judge("s003", quiet, closing, back=101.0, live=True).stale_s == pytest.approx(0.2)
    allowed = Watch(100.0, set(), after_us=0, fresh_at=100.5)
    allowed.feed(False, "heartbeat stale", 100.4)
    assert judge("s004", allowed, Expect(ALLOWED, 2.0, "the kill"), back=100.0, live=True).problems == ()


def test_sockets_cover_both_bridges_every_instrument_and_both_reconnect_policies() -> None:
    plans = plan_sockets(16, 2, ["A", "B", "C", "D"])
    assert {p.home for p in plans} == {0, 1}
    for bridge in (0, 1):
        mine = [p for p in plans if p.home == bridge]
        assert {i for p in mine for i in p.instruments} == {"A", "B", "C", "D"}
        assert {p.sticky for p in mine} == {True, False}
    assert any(len(p.instruments) == 2 for p in plans), "some follow two instruments on /ws"
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0 and percentile([], 0.5) is None


def test_violations_are_kept_up_to_a_bound_and_counted_by_kind() -> None:
    v = Violations()
    for i in range(MAX_KEPT + 3):
        v.add(ORDER if i % 2 else CHECKSUM, f"line {i}")
    lines, counts = v.take()
    assert lines[0] == "line 0" and lines[-1] == "... and 3 more like them" and len(lines) == MAX_KEPT + 1
    assert counts == {CHECKSUM: (MAX_KEPT + 4) // 2, ORDER: (MAX_KEPT + 3) // 2}
    assert v.take() == ([], {}), "taken once"


def test_the_bus_tap_sees_a_book_older_than_the_last_and_a_forged_one() -> None:
    tap = BusTap("redis://127.0.0.1:1/0", "md:book:*", Verifier(DEFAULT_INSTRUMENTS))  # never connected here
    channel = b"md:book:BTC-USD"
    for seq in (5, 6, 6):  # a repeat is a republish (a new leader, Redis back): allowed
        tap.message(channel, book(seq))
    tap.message(channel, book(4))  # what a leader woken after its lease would have written
    forged = orjson.loads(book(7))
    forged["checksum"] += 1
    tap.message(channel, orjson.dumps(forged))
    tap.message(b"md:book:ETH-USD", book(8))
    lines, counts = tap.violations.take()
    assert counts == {ORDER: 1, CHECKSUM: 1, OTHER: 1}, lines
    assert lines[0] == "bus md:book:BTC-USD: seq 4 after seq 6 in epoch 1 (a writer that should have been fenced off?)"
