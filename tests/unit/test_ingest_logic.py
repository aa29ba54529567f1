"""The ingestor's pure parts: backoff, the outbox (coalescing, verification), the pipeline it writes."""

from __future__ import annotations

import random

import orjson
import pytest

from marketdata import schema
from marketdata.backoff import Backoff
from marketdata.book import BID, OrderBook
from marketdata.errors import ChecksumMismatch, SequenceGap, UnknownInstrument
from marketdata.ingest.ingestor import select_instruments
from marketdata.ingest.publish_queue import IngestStats, Outbox, drain_commands
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument
from marketdata.logs import redact
from marketdata.settings import IngestSettings
from marketdata.sim.model import Event as ModelEvent
from marketdata.sim.model import Model, Snapshot, Trade, Update
from marketdata.v1 import market_data_pb2 as pb

BTC, ETH = DEFAULT_INSTRUMENTS[0], DEFAULT_INSTRUMENTS[1]


def to_pb(ev: ModelEvent) -> pb.Event:
    """The model's event as the simulator sends it (test-side conversion)."""
    out = pb.Event(instrument=ev.instrument, seq=ev.seq, ts=ev.ts)
    body = ev.body
    if isinstance(body, Snapshot):
        out.snapshot.bids.extend(pb.Level(side=1, price=p, size=s) for p, s in body.bids)
        out.snapshot.asks.extend(pb.Level(side=2, price=p, size=s) for p, s in body.asks)
    elif isinstance(body, Update):
        out.update.changes.extend(pb.Level(side=sd, price=p, size=s) for sd, p, s in body.changes)
    elif isinstance(body, Trade):
        out.trade.CopyFrom(pb.Trade(price=body.price, size=body.size, aggressor=body.aggressor))
    if ev.checksum is not None:
        out.checksum = ev.checksum
    return out


def outbox(instruments: tuple[Instrument, ...] = (BTC, ETH), **kw: object) -> Outbox:
    return Outbox(instruments, IngestSettings(**kw), IngestStats())  # type: ignore[arg-type]


def model(instruments: tuple[Instrument, ...] = (BTC, ETH)) -> Model:
    return Model(instruments, random.Random(3))


def test_backoff_doubles_to_the_cap_with_jitter_and_resets() -> None:
    b = Backoff(initial=0.1, cap=5.0, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    ceilings = [min(5.0, 0.1 * 2**i) for i in range(12)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings)), delays
    assert max(delays) <= 5.0 and delays[-1] >= 2.5
    assert len(set(delays)) == len(delays), "jitter should make delays differ"
    b.reset()
    assert b.next() <= 0.1


def test_one_snapshot_per_changed_instrument_per_drain() -> None:
    m, box = model(), outbox()
    batch = [to_pb(m.snapshot("BTC-USD", 10)), to_pb(m.snapshot("ETH-USD", 10))]
    box.apply(batch, pts=1)
    for i in range(5):  # several batches before the publisher's turn
        box.apply([to_pb(e) for e in m.generate("BTC-USD", 40, ts=100 + i)], pts=1)
    drain = box.take(pts=999)
    assert drain.instruments is not None and [i["id"] for i in orjson.loads(drain.instruments)] == ["BTC-USD", "ETH-USD"]
    assert [k for k, _ in drain.books] == [b"md:book:BTC-USD", b"md:book:ETH-USD"]
    btc = schema.decode(drain.books[0][1])
    truth = m.book("BTC-USD")
    assert (btc["seq"], btc["ts"], btc["pts"], btc["checksum"]) == (truth.seq, 104, 999, truth.checksum())
    assert btc["bids"][0] == [BTC.price(truth.bids(1)[0][0]), BTC.size(truth.bids(1)[0][1])]
    assert len(btc["bids"]) == 25 and len(btc["asks"]) == 25
    assert box.stats.snapshots == 2 and box.stats.trades == drain.trade_count
    assert not box.take(pts=1000), "nothing changed since the last drain"


def test_coalescing_off_publishes_every_event_in_order() -> None:
    m, box = model((BTC,)), outbox((BTC,), coalesce=False)
    box.apply([to_pb(m.snapshot("BTC-USD", 1))], pts=5)
    box.apply([to_pb(e) for e in m.generate("BTC-USD", 30, ts=2)], pts=6)
    seqs = [schema.decode(p)["seq"] for _, p in box.take(pts=7).books]
    assert seqs == list(range(0, 31))


def test_a_gap_publishes_nothing_until_a_fresh_snapshot() -> None:
    m, box = model((BTC,)), outbox((BTC,))
    box.apply([to_pb(m.snapshot("BTC-USD", 1))], pts=1)
    box.take(pts=1)
    events = [to_pb(e) for e in m.generate("BTC-USD", 10, ts=2)]
    box.apply(events[:3], pts=2)  # changed, not yet published
    with pytest.raises(SequenceGap):
        box.apply(events[4:], pts=3)
    assert not box.take(pts=4).books, "the broken book must not be published"
    box.apply(events[4:], pts=5)  # incremental events of a broken book are skipped
    assert not box.take(pts=6).books
    box.apply([to_pb(m.snapshot("BTC-USD", 7))], pts=7)
    (key, payload), = box.take(pts=8).books
    assert schema.decode(payload)["seq"] == m.book("BTC-USD").seq


def test_a_checksum_mismatch_is_raised_and_not_published() -> None:
    m, box = model((BTC,)), outbox((BTC,))
    box.apply([to_pb(m.snapshot("BTC-USD", 1))], pts=1)
    box.take(pts=1)
    events = [to_pb(e) for e in m.generate("BTC-USD", 5, ts=2)]
    events[-1].checksum ^= 1
    with pytest.raises(ChecksumMismatch):
        box.apply(events, pts=2)
    assert not box.take(pts=3).books


def test_trades_are_encoded_in_order_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import marketdata.ingest.publish_queue as ingest

    monkeypatch.setattr(ingest, "MAX_PENDING", 5)
    box = outbox((BTC,))
    book = OrderBook("BTC-USD")
    book.reset(1, [(100, 5)], [(101, 5)])
    snap = pb.Event(instrument="BTC-USD", seq=1, ts=1, checksum=book.checksum())
    snap.snapshot.bids.add(side=1, price=100, size=5)
    snap.snapshot.asks.add(side=2, price=101, size=5)
    trades = [pb.Event(instrument="BTC-USD", seq=s, ts=s, trade=pb.Trade(price=101, size=1, aggressor=BID)) for s in range(2, 10)]
    trades[-1].checksum = book.checksum()
    box.apply([snap, *trades], pts=1)
    drain = box.take(pts=2)
    msgs = [schema.decode(p) for p in drain.trades[b"md:trades:BTC-USD"]]
    assert [t["seq"] for t in msgs] == [5, 6, 7, 8, 9]
    assert msgs[0] == {"v": 1, "type": "trade", "instrument": "BTC-USD", "seq": 5, "ts": 5, "epoch": 0, "price": 10.1, "size": 0.0001, "side": "buy"}
    assert box.stats.dropped == 3 and box.stats.trades == 8


def test_republish_all_makes_every_ready_book_due_again() -> None:
    m, box = model(), outbox()
    box.apply([to_pb(m.snapshot("BTC-USD", 1))], pts=1)  # ETH never got its snapshot
    box.take(pts=1)
    assert not box.take(pts=2)
    box.republish_all()
    drain = box.take(pts=3)
    assert drain.instruments is not None and [k for k, _ in drain.books] == [b"md:book:BTC-USD"]


def test_select_instruments_keeps_the_requested_order_and_names_an_unknown_one() -> None:
    listed = [pb.Instrument(id=i.id, kind=i.kind, description=i.description, tick_size=i.tick_size, lot_size=i.lot_size,
                            price_decimals=i.price_decimals, size_decimals=i.size_decimals) for i in DEFAULT_INSTRUMENTS]
    assert [i.id for i in select_instruments(listed, ())] == [i.id for i in DEFAULT_INSTRUMENTS]
    chosen = select_instruments(listed, ("ETH-USD", "BTC-USD", "ETH-USD"))
    assert [i.id for i in chosen] == ["ETH-USD", "BTC-USD"]
    assert schema.instrument_json(chosen[1]) == schema.instrument_json(BTC)
    with pytest.raises(UnknownInstrument, match="'DOGE-USD'"):
        select_instruments(listed, ("BTC-USD", "DOGE-USD"))


def test_redact_hides_only_the_password() -> None:
    assert redact("redis://u:secret@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_a_drain_is_a_few_commands_whatever_its_size() -> None:
    m, box = model(), outbox()
    box.apply([to_pb(m.snapshot("BTC-USD", 1)), to_pb(m.snapshot("ETH-USD", 1))], pts=1)
    box.apply([to_pb(e) for e in m.generate("BTC-USD", 3000, ts=2)], pts=2)
    drain = box.take(pts=3)
    trades = drain.trades[b"md:trades:BTC-USD"]
    assert len(trades) > 3 and list(drain.trades) == [b"md:trades:BTC-USD"], "the model should have traded in 3000 events"
    commands = drain_commands(drain, b"md:instruments", history=3)
    assert len(commands) == 3
    assert commands[0] == (b"SET", b"md:instruments", drain.instruments)
    assert commands[1][0] == b"EVAL" and commands[1][2:] == (b"2", b"md:book:BTC-USD", b"md:book:ETH-USD", *(p for _, p in drain.books))
    assert commands[2][0] == b"EVAL" and commands[2][2:] == (b"1", b"md:trades:BTC-USD", b"3", *trades)
    assert not box.take(pts=4)
