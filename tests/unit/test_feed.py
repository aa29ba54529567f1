"""Books: applying hand-built protobuf events, with (epoch, seq) and checksum verification."""

from __future__ import annotations

import zlib

import pytest

from marketdata import schema
from marketdata.book import ASK, BID, OrderBook, checksum
from marketdata.errors import (
    BookError,
    ChecksumMismatch,
    EpochMismatch,
    SequenceGap,
    UnknownInstrument,
)
from marketdata.feed import BatchResult, Books, select_instruments
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.v1 import market_data_pb2 as pb

BIDS = [(100, 5), (99, 3)]
ASKS = [(101, 2), (103, 7)]
EXAMPLE_CRC32 = 4181130011  # docs/checksum.md


def snapshot(
    instrument: str, seq: int, bids: list[tuple[int, int]] = BIDS, asks: list[tuple[int, int]] = ASKS, ts: int = 1_000,
    crc: int | None = -1, epoch: int = 0,
) -> pb.Event:
    """A snapshot event; by default it carries the right checksum of its levels."""
    ev = pb.Event(instrument=instrument, seq=seq, ts=ts, epoch=epoch)
    ev.snapshot.bids.extend(pb.Level(side=pb.SIDE_BID, price=p, size=s) for p, s in bids)
    ev.snapshot.asks.extend(pb.Level(side=pb.SIDE_ASK, price=p, size=s) for p, s in asks)
    if crc == -1:
        crc = checksum(bids, asks)
    if crc is not None:
        ev.checksum = crc
    return ev


def update(
    instrument: str, seq: int, *changes: tuple[int, int, int], ts: int = 1_000, crc: int | None = None, epoch: int = 0
) -> pb.Event:
    ev = pb.Event(instrument=instrument, seq=seq, ts=ts, epoch=epoch)
    ev.update.changes.extend(pb.Level(side=sd, price=p, size=s) for sd, p, s in changes)
    if crc is not None:
        ev.checksum = crc
    return ev


def trade(instrument: str, seq: int, price: int = 101, size: int = 1, ts: int = 1_000, epoch: int = 0) -> pb.Event:
    ev = pb.Event(instrument=instrument, seq=seq, ts=ts, epoch=epoch)
    ev.trade.CopyFrom(pb.Trade(price=price, size=size, aggressor=pb.SIDE_BID))
    return ev



def test_snapshot_then_updates() -> None:
    books = Books(["A", "B"])
    assert not books.is_ready("A")
    assert books.apply(snapshot("A", 10)) == "snapshot"
    assert books.is_ready("A") and not books.is_ready("B")
    book = books.books["A"]
    assert book.seq == 10 and book.checksum() == EXAMPLE_CRC32

    after = checksum([(100, 6), (99, 3)], [(102, 1), (103, 7)])
    kind = books.apply(update("A", 11, (BID, 100, 6), (ASK, 101, 0), (ASK, 102, 1), crc=after))
    assert kind == "update"
    assert book.seq == 11
    assert book.bids() == [(100, 6), (99, 3)]
    assert book.asks() == [(102, 1), (103, 7)]
    # without a checksum the event is applied unverified
    books.apply(update("A", 12, (BID, 98, 4)))
    assert book.bids() == [(100, 6), (99, 3), (98, 4)]
    assert books.is_ready("A")


def test_snapshot_replaces_the_book_not_merges() -> None:
    books = Books(["A"])
    books.apply(snapshot("A", 1))
    books.apply(update("A", 2, (BID, 50, 1)))
    books.apply(snapshot("A", 100, bids=[(90, 1)], asks=[]))
    assert books.books["A"].bids() == [(90, 1)]
    assert books.books["A"].asks() == []
    assert books.books["A"].seq == 100


def test_a_new_epoch_is_a_reset_at_once_whatever_its_seq() -> None:
    """A simulator restart: seq 224 of one run, then seq 20 of the next, is a reset, not a regression."""
    books = Books(["A", "B"])
    assert books.epoch is None
    books.apply_batch([snapshot("A", 200, epoch=5), snapshot("B", 7, epoch=5)])
    books.apply(update("A", 201, (BID, 50, 1), epoch=5))
    assert (books.books["A"].epoch, books.books["A"].seq, books.epoch) == (5, 201, 5)

    books.apply(snapshot("A", 20, bids=[(90, 1)], asks=[(91, 1)], epoch=9))
    book = books.books["A"]
    assert (book.epoch, book.seq, books.epoch) == (9, 20, 9)
    assert book.bids() == [(90, 1)] and book.asks() == [(91, 1)], "replaced, not merged"
    assert books.is_ready("A")
    books.apply(update("A", 21, (ASK, 92, 1), epoch=9, crc=checksum([(90, 1)], [(91, 1), (92, 1)])))
    assert book.seq == 21
    # A smaller epoch is a reset too: the simulator's clock may have been stepped back.
    books.apply(snapshot("A", 3, epoch=2))
    assert (book.epoch, book.seq, book.bids()) == (2, 3, BIDS)
    # B's book is still of epoch 5 and goes on there until its own new snapshot.
    books.apply(update("B", 8, (BID, 1, 1), epoch=5))
    assert (books.books["B"].epoch, books.books["B"].seq) == (5, 8)


def test_within_an_epoch_a_snapshot_never_moves_a_book_back() -> None:
    books = Books(["A"])
    books.apply(snapshot("A", 10, epoch=5))
    books.apply(snapshot("A", 10, epoch=5))  # the same place again (a resync with no event between) is fine
    with pytest.raises(SequenceGap) as info:
        books.apply(snapshot("A", 9, bids=[(1, 1)], epoch=5))
    assert (info.value.expected, info.value.got) == (10, 9)
    assert not books.is_ready("A") and books.books["A"].bids() == BIDS, "the stale snapshot is not applied"
    books.apply(snapshot("A", 12, epoch=5))
    assert books.is_ready("A") and books.books["A"].seq == 12


def test_an_incremental_event_of_another_epoch_waits_for_that_epochs_snapshot() -> None:
    books = Books(["A"])
    books.apply(snapshot("A", 10, epoch=5))
    with pytest.raises(EpochMismatch) as info:
        books.apply(update("A", 11, (BID, 1, 1), epoch=6))  # seq follows, but it is another run's
    err = info.value
    assert isinstance(err, BookError) and (err.instrument, err.expected, err.got) == ("A", 5, 6)
    assert "epoch 6 on a book of epoch 5" in str(err)
    assert not books.is_ready("A") and books.books["A"].seq == 10 and books.books["A"].bids() == BIDS
    books.apply(snapshot("A", 1, epoch=6))
    books.apply(update("A", 2, (BID, 1, 1), epoch=6))
    assert (books.books["A"].epoch, books.books["A"].seq) == (6, 2)


def test_a_batch_across_a_restart_ends_on_the_new_epochs_book() -> None:
    books = Books(["A"])
    after = checksum([(100, 5), (99, 3), (98, 1)], ASKS)
    result = books.apply_batch(
        [
            snapshot("A", 500, bids=[(7, 7)], asks=[(8, 8)], epoch=1, ts=10),
            update("A", 501, (BID, 6, 1), epoch=1, ts=11),
            snapshot("A", 0, epoch=2, ts=12),
            update("A", 1, (BID, 98, 1), epoch=2, ts=13, crc=after),
        ]
    )
    assert result.changed == {"A": 13} and result.snapshots == 2
    book = books.books["A"]
    assert (book.epoch, book.seq, book.checksum()) == (2, 1, after)
    with pytest.raises(EpochMismatch):
        books.apply_batch([update("A", 2, (BID, 1, 1), epoch=1)])  # a late event of the old run


def test_gap_raises_and_book_waits_for_next_snapshot() -> None:
    books = Books(["A", "B"])
    books.apply(snapshot("A", 10))
    books.apply(snapshot("B", 3))
    with pytest.raises(SequenceGap) as info:
        books.apply(update("A", 12, (BID, 100, 1)))
    assert (info.value.expected, info.value.got) == (11, 12)
    assert not books.is_ready("A")
    assert books.is_ready("B"), "a gap on one instrument leaves the others alone"
    assert books.books["A"].bids() == BIDS, "the gapped event is not applied"

    # until the next snapshot, incremental events of A are skipped, whatever their seq
    assert books.apply(update("A", 13, (BID, 1, 1))) == "update"
    assert books.apply(trade("A", 14)) == "trade"
    assert books.books["A"].bids() == BIDS
    assert not books.is_ready("A")

    books.apply(snapshot("A", 20, bids=[(80, 1)], asks=[(81, 1)]))
    assert books.is_ready("A")
    books.apply(update("A", 21, (ASK, 82, 2), crc=checksum([(80, 1)], [(81, 1), (82, 2)])))
    assert books.books["A"].seq == 21


def test_duplicate_seq_is_a_gap() -> None:
    books = Books(["A"])
    books.apply(snapshot("A", 10))
    books.apply(update("A", 11, (BID, 1, 1)))
    with pytest.raises(SequenceGap):
        books.apply(update("A", 11, (BID, 1, 1)))


def test_checksum_mismatch_raises_and_invalidates() -> None:
    books = Books(["A"])
    books.apply(snapshot("A", 1))
    wrong = EXAMPLE_CRC32  # the checksum before the change, not after it
    with pytest.raises(ChecksumMismatch) as info:
        books.apply(update("A", 2, (BID, 100, 9), crc=wrong))
    err = info.value
    assert isinstance(err, BookError)
    assert (err.instrument, err.seq, err.expected) == ("A", 2, wrong)
    assert err.got == checksum([(100, 9), (99, 3)], ASKS)
    assert "checksum mismatch at seq 2" in str(err)
    assert not books.is_ready("A")


def test_snapshot_with_wrong_checksum_is_refused() -> None:
    books = Books(["A"])
    with pytest.raises(ChecksumMismatch):
        books.apply(snapshot("A", 1, crc=123))
    assert not books.is_ready("A")
    # a snapshot without a checksum is taken as it is
    books.apply(snapshot("A", 2, crc=None))
    assert books.is_ready("A")


def test_trades_advance_seq_and_leave_levels() -> None:
    books = Books(["A"])
    books.apply(snapshot("A", 1))
    ev = trade("A", 2)
    ev.checksum = EXAMPLE_CRC32
    assert books.apply(ev) == "trade"
    assert books.books["A"].seq == 2
    assert books.books["A"].checksum() == EXAMPLE_CRC32
    with pytest.raises(SequenceGap):
        books.apply(trade("A", 4))


def test_unknown_instrument_raises() -> None:
    books = Books(["A"])
    with pytest.raises(UnknownInstrument, match="'Z'") as info:
        books.apply(snapshot("Z", 1))
    assert info.value.instrument == "Z"
    with pytest.raises(UnknownInstrument):
        books.apply_batch([snapshot("A", 1), update("Z", 2)])


def test_updates_before_first_snapshot_are_skipped() -> None:
    books = Books(["A"])
    # seq and checksum of a book not yet started are not checked: nothing raises
    assert books.apply(update("A", 5, (BID, 1, 1), crc=1)) == "update"
    assert books.apply(trade("A", 6)) == "trade"
    assert books.books["A"].bids() == [] and not books.is_ready("A")
    result = books.apply_batch([update("A", 7, (BID, 1, 1)), trade("A", 8)])
    assert result.changed == {} and result.level_changes == 0


def test_invalidate_one_or_all() -> None:
    books = Books(["A", "B"])
    books.apply_batch([snapshot("A", 1), snapshot("B", 1)])
    books.invalidate("A")
    assert not books.is_ready("A") and books.is_ready("B")
    books.invalidate()
    assert not books.is_ready("B")


def test_apply_batch_coalesces_changes() -> None:
    books = Books(["A", "B", "C"])
    after = checksum([(100, 5), (99, 3)], [(101, 2), (102, 1), (103, 7)])
    result = books.apply_batch(
        [
            snapshot("A", 1, ts=10),
            update("A", 2, (ASK, 102, 1), ts=11),
            snapshot("B", 5, ts=12),
            trade("A", 3, ts=13),
            update("B", 6, (BID, 98, 1), (BID, 97, 1), ts=14),
            update("A", 4, (ASK, 102, 1), ts=15, crc=after),
            update("C", 9, (BID, 1, 1), ts=16),  # C has no snapshot yet: skipped
        ]
    )
    assert isinstance(result, BatchResult)
    # one entry per changed instrument, with the exchange time of its last event
    assert result.changed == {"A": 15, "B": 14}
    assert [(t.instrument, t.seq) for t in result.trades] == [("A", 3)]
    assert result.snapshots == 2
    assert result.level_changes == 4
    assert books.books["A"].seq == 4 and books.books["B"].seq == 6


def test_apply_batch_propagates_errors() -> None:
    books = Books(["A"])
    with pytest.raises(SequenceGap):
        books.apply_batch([snapshot("A", 1), update("A", 3)])
    assert not books.is_ready("A")


def test_books_use_the_shared_order_book() -> None:
    books = Books(["A"])
    assert isinstance(books.books["A"], OrderBook)
    assert books.books["A"].checksum() == zlib.crc32(b"|")


def test_select_instruments_keeps_the_requested_order_and_names_an_unknown_one() -> None:
    listed = [pb.Instrument(id=i.id, kind=i.kind, description=i.description, tick_size=i.tick_size, lot_size=i.lot_size,
                            price_decimals=i.price_decimals, size_decimals=i.size_decimals) for i in DEFAULT_INSTRUMENTS]
    assert [i.id for i in select_instruments(listed, ())] == [i.id for i in DEFAULT_INSTRUMENTS]
    chosen = select_instruments(listed, ("ETH-USD", "BTC-USD", "ETH-USD"))
    assert [i.id for i in chosen] == ["ETH-USD", "BTC-USD"]
    assert schema.instrument_json(chosen[1]) == schema.instrument_json(DEFAULT_INSTRUMENTS[0])
    with pytest.raises(UnknownInstrument, match="'DOGE-USD'"):
        select_instruments(listed, ("BTC-USD", "DOGE-USD"))
