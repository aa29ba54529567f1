"""OrderBook against a naive model: a dict per side, sorted on every read."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from marketdata.book import ASK, BID, CHECKSUM_DEPTH, OrderBook, Top, checksum
from marketdata.errors import BookError, SequenceGap

# The worked example of docs/checksum.md (and the README): keep the three in step.
EXAMPLE_BIDS = [(100, 5), (99, 3)]
EXAMPLE_ASKS = [(101, 2), (103, 7)]
EXAMPLE_TEXT = b"101:2,103:7|100:5,99:3"
EXAMPLE_CRC32 = 4181130011
EMPTY_CRC32 = 2343686810  # crc32(b"|")


class Reference:
    """The obvious book: one dict per side, sorted whenever it is read."""

    def __init__(self) -> None:
        self.sides: dict[int, dict[int, int]] = {BID: {}, ASK: {}}

    def reset(self, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> None:
        self.sides = {BID: {}, ASK: {}}
        for side, levels in ((BID, bids), (ASK, asks)):
            for price, size in levels:
                if size:
                    self.sides[side][price] = size

    def set(self, side: int, price: int, size: int) -> None:
        if size:
            self.sides[side][price] = size
        else:
            self.sides[side].pop(price, None)

    def levels(self, side: int) -> list[tuple[int, int]]:
        return sorted(self.sides[side].items(), reverse=side == BID)

    def checksum(self) -> int:
        def text(side: int) -> str:
            return ",".join(f"{p}:{s}" for p, s in self.levels(side)[:10])

        return zlib.crc32(f"{text(ASK)}|{text(BID)}".encode("ascii"))


prices = st.integers(min_value=1, max_value=40)  # a narrow band: inserts, updates and deletes all happen
sizes = st.integers(min_value=0, max_value=6) | st.just(0)  # 0 (delete) often
sides = st.sampled_from([BID, ASK])
# a snapshot lists each price once; zero sizes in it are skipped
level_lists = st.dictionaries(prices, st.integers(min_value=0, max_value=6), max_size=30).map(lambda d: list(d.items()))


class BookMachine(RuleBasedStateMachine):
    """Random set/reset sequences; every view of the book equals the reference's after each step."""

    @initialize()
    def start(self) -> None:
        self.book = OrderBook("X")
        self.ref = Reference()

    @rule(side=sides, price=prices, size=sizes)
    def set_level(self, side: int, price: int, size: int) -> None:
        self.book.set(side, price, size)
        self.ref.set(side, price, size)

    @rule(side=sides, price=prices, size=sizes)
    def set_side_method(self, side: int, price: int, size: int) -> None:
        (self.book.set_bid if side == BID else self.book.set_ask)(price, size)
        self.ref.set(side, price, size)

    @rule(changes=st.lists(st.tuples(sides, prices, sizes), max_size=20))
    def apply_many(self, changes: list[tuple[int, int, int]]) -> None:
        self.book.apply(changes)
        for side, price, size in changes:
            self.ref.set(side, price, size)

    @rule(seq=st.integers(min_value=0, max_value=10**6), bids=level_lists, asks=level_lists)
    def reset(self, seq: int, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> None:
        self.book.reset(seq, bids, asks)
        self.ref.reset(bids, asks)
        assert self.book.seq == seq

    @invariant()
    def views_match(self) -> None:
        book, ref = self.book, self.ref
        bids, asks = ref.levels(BID), ref.levels(ASK)
        assert book.bids() == bids
        assert book.asks() == asks
        for n in (0, 1, 3, 10, 25):
            assert book.bids(n) == bids[:n], f"top {n} bids"
            assert book.asks(n) == asks[:n], f"top {n} asks"
        assert book.depth(BID) == len(bids)
        assert book.depth(ASK) == len(asks)
        assert book.best_bid == (bids[0] if bids else None)
        assert book.best_ask == (asks[0] if asks else None)
        assert book.top() == Top(book.best_bid, book.best_ask)
        assert book.is_crossed() == bool(bids and asks and bids[0][0] >= asks[0][0])
        for n in (-1, -5):
            assert book.bids(n) == book.asks(n) == []
        for side, levels in ((BID, bids), (ASK, asks)):
            for i in range(-len(levels), len(levels)):
                assert book.level_at(side, i) == levels[i], f"level_at({side}, {i})"
            for i in (len(levels), -len(levels) - 1):
                with pytest.raises(IndexError):
                    book.level_at(side, i)
            for price in (1, 20, 40):
                assert book.size_at(side, price) == ref.sides[side].get(price, 0)

    @invariant()
    def checksum_matches(self) -> None:
        want = self.ref.checksum()
        assert self.book.checksum() == want
        assert checksum(self.ref.levels(BID), self.ref.levels(ASK)) == want


TestBookMachine = BookMachine.TestCase
TestBookMachine.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)


# -- sequence ------------------------------------------------------------------


def test_advance_follows_seq() -> None:
    book = OrderBook("X", seq=7)
    book.advance(8)
    book.advance(9)
    assert book.seq == 9


@given(start=st.integers(min_value=0, max_value=10**9), got=st.integers(min_value=0, max_value=10**9 + 2))
def test_any_other_seq_is_a_gap(start: int, got: int) -> None:
    book = OrderBook("BTC-USD", seq=start)
    if got == start + 1:
        book.advance(got)
        assert book.seq == got
        return
    with pytest.raises(SequenceGap) as info:
        book.advance(got)
    err = info.value
    assert isinstance(err, BookError)
    assert (err.instrument, err.expected, err.got) == ("BTC-USD", start + 1, got)
    assert f"expected seq {start + 1}" in str(err) and f"got {got}" in str(err), str(err)
    assert book.seq == start, "a gap must not move the book"


def test_reset_sets_seq_and_skips_empty_levels() -> None:
    book = OrderBook("X", seq=3)
    book.reset(42, bids=[(10, 0), (9, 1)], asks=[(11, 0), (12, 2)])
    assert book.seq == 42
    assert book.bids() == [(9, 1)]
    assert book.asks() == [(12, 2)]
    book.advance(43)


# -- checksum ------------------------------------------------------------------


def test_a_book_carries_its_epoch_outside_the_checksum() -> None:
    book = OrderBook("X")
    assert (book.epoch, book.seq) == (0, 0)
    book.reset(5, [(10, 1)], [(11, 1)], epoch=7)
    crc = book.checksum()
    assert (book.epoch, book.seq) == (7, 5)
    book.reset(6, [(10, 1)], [(11, 1)])  # no epoch given: the book stays in its own
    assert (book.epoch, book.seq) == (7, 6) and book.checksum() == crc
    book.reset(1, [(10, 1)], [(11, 1)], epoch=0)
    assert book.epoch == 0 and book.checksum() == crc, "the checksum covers levels only"
    assert "epoch=0, seq=1" in repr(book)


def test_checksum_worked_example() -> None:
    book = OrderBook("X")
    # given worst-first on purpose: the book orders them
    book.reset(1, bids=[(99, 3), (100, 5)], asks=[(103, 7), (101, 2)])
    assert zlib.crc32(EXAMPLE_TEXT) == EXAMPLE_CRC32
    assert book.checksum() == EXAMPLE_CRC32
    assert checksum(EXAMPLE_BIDS, EXAMPLE_ASKS) == EXAMPLE_CRC32


def test_checksum_is_asks_then_bids() -> None:
    # the same levels with the sides swapped give another text, hence another number
    assert checksum(EXAMPLE_ASKS, EXAMPLE_BIDS) == zlib.crc32(b"100:5,99:3|101:2,103:7")
    assert checksum(EXAMPLE_ASKS, EXAMPLE_BIDS) != EXAMPLE_CRC32


def test_checksum_of_empty_sides() -> None:
    book = OrderBook("X")
    assert book.checksum() == EMPTY_CRC32 == zlib.crc32(b"|")
    book.reset(1, asks=EXAMPLE_ASKS)
    assert book.checksum() == zlib.crc32(b"101:2,103:7|")
    book.reset(2, bids=EXAMPLE_BIDS)
    assert book.checksum() == zlib.crc32(b"|100:5,99:3")


def test_checksum_counts_only_the_best_ten_levels() -> None:
    book = OrderBook("X")
    book.reset(1, bids=[(100 - i, i + 1) for i in range(15)], asks=[(101 + i, i + 1) for i in range(15)])
    asks = ",".join(f"{101 + i}:{i + 1}" for i in range(CHECKSUM_DEPTH))
    bids = ",".join(f"{100 - i}:{i + 1}" for i in range(CHECKSUM_DEPTH))
    before = book.checksum()
    assert before == zlib.crc32(f"{asks}|{bids}".encode())
    # beyond the 10th level: no effect
    book.set(BID, 100 - 12, 99)
    book.set(ASK, 101 + 14, 0)
    book.set(ASK, 500, 1)
    assert book.checksum() == before
    # the 10th level itself counts
    book.set(ASK, 101 + 9, 77)
    assert book.checksum() != before
    # generators are read only as far as needed
    assert checksum(iter(book.bids()), iter(book.asks())) == book.checksum()


# -- edges -----------------------------------------------------------------------


def test_set_then_delete_levels() -> None:
    book = OrderBook("X")
    book.reset(1, bids=EXAMPLE_BIDS, asks=EXAMPLE_ASKS)
    book.set(BID, 100, 0)
    book.set(ASK, 102, 4)
    assert book.bids() == [(99, 3)]
    assert book.asks() == [(101, 2), (102, 4), (103, 7)]
    book.set(BID, 55, 0)  # deleting an absent level is a no-op
    assert book.depth(BID) == 1


def test_empty_book_reads() -> None:
    book = OrderBook("X")
    assert book.bids() == book.asks() == []
    assert book.bids(25) == book.asks(25) == []
    assert book.best_bid is None and book.best_ask is None
    top = book.top()
    assert top.spread is None and top.mid2 is None
    assert not book.is_crossed()
    with pytest.raises(IndexError):
        book.level_at(BID, 0)


def test_top_spread_and_mid() -> None:
    book = OrderBook("X")
    book.reset(1, bids=EXAMPLE_BIDS, asks=EXAMPLE_ASKS)
    top = book.top()
    assert top == Top((100, 5), (101, 2))
    assert top.spread == 1
    assert top.mid2 == 201
    book.set(BID, 101, 1)
    assert book.is_crossed()  # locked counts as crossed


@pytest.mark.parametrize("side", [0, 3, -1])
def test_bad_side_is_refused(side: int) -> None:
    book = OrderBook("X")
    with pytest.raises(ValueError, match="bad side"):
        book.set(side, 100, 1)
    with pytest.raises(ValueError, match="bad side"):
        book.apply([(BID, 99, 1), (side, 100, 1)])
    assert book.depth(BID) == 1 and book.depth(ASK) == 0, "changes before the bad one stay applied"
