"""The publish queue (marketdata.ingest.publish_queue): what the ingestor decides to write, and the commands it writes it with."""

from __future__ import annotations

import random

import orjson
import pytest

from marketdata import schema
from marketdata.book import BID, OrderBook
from marketdata.errors import ChecksumMismatch, SequenceGap
from marketdata.ingest.lease import FENCE, Fence
from marketdata.ingest.publish_queue import IngestStats, PublishQueue, drain_commands, tally
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument
from marketdata.settings import IngestSettings
from marketdata.sim.model import Event as ModelEvent
from marketdata.sim.model import Model, Snapshot, Trade, Update
from marketdata.v1 import market_data_pb2 as pb

BTC, ETH = DEFAULT_INSTRUMENTS[0], DEFAULT_INSTRUMENTS[1]
LEASE = Fence(b"md:leader", b"7 ingest:here:1:abc")


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


def queue(instruments: tuple[Instrument, ...] = (BTC, ETH), **kw: object) -> PublishQueue:
    return PublishQueue(instruments, IngestSettings(**kw), IngestStats())  # type: ignore[arg-type]


def model(instruments: tuple[Instrument, ...] = (BTC, ETH)) -> Model:
    return Model(instruments, random.Random(3))


def test_one_snapshot_per_changed_instrument_per_drain() -> None:
    m, box = model(), queue()
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
    m, box = model((BTC,)), queue((BTC,), coalesce=False)
    box.apply([to_pb(m.snapshot("BTC-USD", 1))], pts=5)
    box.apply([to_pb(e) for e in m.generate("BTC-USD", 30, ts=2)], pts=6)
    seqs = [schema.decode(p)["seq"] for _, p in box.take(pts=7).books]
    assert seqs == list(range(0, 31))


def test_a_gap_publishes_nothing_until_a_fresh_snapshot() -> None:
    m, box = model((BTC,)), queue((BTC,))
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
    m, box = model((BTC,)), queue((BTC,))
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
    box = queue((BTC,))
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
    m, box = model(), queue()
    box.apply([to_pb(m.snapshot("BTC-USD", 1))], pts=1)  # ETH never got its snapshot
    box.take(pts=1)
    assert not box.take(pts=2)
    box.republish_all()
    drain = box.take(pts=3)
    assert drain.instruments is not None and [k for k, _ in drain.books] == [b"md:book:BTC-USD"]


def test_a_drain_is_a_few_commands_whatever_its_size() -> None:
    m, box = model(), queue()
    box.apply([to_pb(m.snapshot("BTC-USD", 1)), to_pb(m.snapshot("ETH-USD", 1))], pts=1)
    box.apply([to_pb(e) for e in m.generate("BTC-USD", 3000, ts=2)], pts=2)
    drain = box.take(pts=3)
    trades = drain.trades[b"md:trades:BTC-USD"]
    assert len(trades) > 3 and list(drain.trades) == [b"md:trades:BTC-USD"], "the model should have traded in 3000 events"
    commands = drain_commands(drain, b"md:instruments", history=3, fence=LEASE)
    assert len(commands) == 3
    lease, value = LEASE.key, LEASE.value
    # Every script starts with the fence, which reads the lease key (KEYS[1]) and the writer's value (ARGV[1]).
    assert all(c[0] == b"EVAL" and c[1].startswith(FENCE) for c in commands)
    assert commands[0][2:] == (b"2", lease, b"md:instruments", value, drain.instruments)
    assert commands[1][2:] == (b"3", lease, b"md:book:BTC-USD", b"md:book:ETH-USD", value, *(p for _, p in drain.books))
    assert commands[2][2:] == (b"2", lease, b"md:trades:BTC-USD", value, b"3", *trades)
    assert not box.take(pts=4)


def test_the_instrument_list_is_written_once_then_again_only_when_asked() -> None:
    box = queue()
    first = box.take(pts=1)
    assert first and first.instruments == schema.encode_instruments((BTC, ETH))
    assert not first.books and not first.trades, "no book is ready before its snapshot"
    assert not box.take(pts=2), "an empty drain is falsy: the publisher sleeps"
    box.republish_all()
    assert box.take(pts=3).instruments == first.instruments


def test_keys_follow_the_prefix_and_snapshots_the_depth() -> None:
    m, box = model((BTC,)), queue((BTC,), prefix="desk7", depth=10)
    box.apply([to_pb(m.snapshot("BTC-USD", 1))], pts=1)
    box.apply([to_pb(e) for e in m.generate("BTC-USD", 200, ts=2)], pts=2)
    drain = box.take(pts=3)
    (key, payload), = drain.books
    assert key == b"desk7:book:BTC-USD"
    assert set(drain.trades) <= {b"desk7:trades:BTC-USD"}
    book = schema.decode(payload)
    assert len(book["bids"]) == 10 and len(book["asks"]) == 10
    fence = Fence(b"desk7:leader", b"1 x")
    assert drain_commands(drain, b"desk7:instruments", history=50, fence=fence)[0][2:] == (b"2", b"desk7:leader", b"desk7:instruments", b"1 x", drain.instruments)


def test_events_of_a_book_waiting_for_its_snapshot_are_not_written() -> None:
    m, box = model(), queue()
    box.apply([to_pb(m.snapshot("BTC-USD", 1)), to_pb(m.snapshot("ETH-USD", 1))], pts=1)
    box.take(pts=1)
    eth = [to_pb(e) for e in m.generate("ETH-USD", 20, ts=2)]
    box.books.invalidate("ETH-USD")  # as after a resubscribe, before the fresh snapshot arrives
    box.apply([*eth, *(to_pb(e) for e in m.generate("BTC-USD", 5, ts=3))], pts=2)
    assert [k for k, _ in box.take(pts=3).books] == [b"md:book:BTC-USD"]


def test_without_coalescing_only_the_newest_snapshots_wait_while_redis_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    import marketdata.ingest.publish_queue as publish_queue

    monkeypatch.setattr(publish_queue, "MAX_PENDING", 8)
    m, box = model((BTC,)), queue((BTC,), coalesce=False)
    box.apply([to_pb(m.snapshot("BTC-USD", 1))], pts=1)
    box.apply([to_pb(e) for e in m.generate("BTC-USD", 20, ts=2)], pts=2)
    seqs = [schema.decode(p)["seq"] for _, p in box.take(pts=3).books]
    assert seqs == list(range(13, 21)), "the oldest go first"
    assert box.stats.dropped == 21 - 8


def test_trades_held_while_redis_is_away_keep_the_newest_of_every_instrument(monkeypatch: pytest.MonkeyPatch) -> None:
    import marketdata.ingest.publish_queue as publish_queue

    monkeypatch.setattr(publish_queue, "MAX_PENDING", 6)
    box = queue()
    book = OrderBook("any")
    book.reset(1, [(100, 5)], [(101, 5)])

    def snapshot(name: str) -> pb.Event:
        ev = pb.Event(instrument=name, seq=0, ts=0, checksum=book.checksum())
        ev.snapshot.bids.add(side=1, price=100, size=5)
        ev.snapshot.asks.add(side=2, price=101, size=5)
        return ev

    def trades(name: str, seqs: range) -> list[pb.Event]:
        out = [pb.Event(instrument=name, seq=s, ts=s, trade=pb.Trade(price=101, size=1, aggressor=BID)) for s in seqs]
        out[-1].checksum = book.checksum()
        return out

    box.apply([snapshot("BTC-USD"), snapshot("ETH-USD")], pts=0)
    box.take(pts=0)
    box.apply(trades("BTC-USD", range(1, 9)), pts=1)  # 8 > 6: BTC keeps its newest 6
    box.apply(trades("ETH-USD", range(1, 3)), pts=1)  # 8 > 6 again: each instrument keeps its newest 3
    drain = box.take(pts=1)
    seqs = {key: [schema.decode(p)["seq"] for p in payloads] for key, payloads in drain.trades.items()}
    assert seqs == {b"md:trades:BTC-USD": [6, 7, 8], b"md:trades:ETH-USD": [1, 2]}
    assert drain.trade_count == 5 and box.stats.trades == 10 and box.stats.dropped == 5
    assert not box.take(pts=2).trades, "a drain takes the trades it returns"


def test_commands_of_a_drain_with_books_only_or_nothing() -> None:
    m, box = model((BTC,)), queue((BTC,))
    box.take(pts=0)  # the instrument list
    assert drain_commands(box.take(pts=1), b"md:instruments", history=50, fence=LEASE) == []
    box.apply([to_pb(m.snapshot("BTC-USD", 1))], pts=1)
    drain = box.take(pts=2)
    (command,) = drain_commands(drain, b"md:instruments", history=50, fence=LEASE)
    assert command[0] == b"EVAL" and command[2:] == (b"2", b"md:leader", b"md:book:BTC-USD", LEASE.value, drain.books[0][1])


def test_a_standby_discards_what_is_due_and_republishes_it_all_when_it_leads() -> None:
    m, box = model(), queue()
    box.apply([to_pb(m.snapshot("BTC-USD", 1)), to_pb(m.snapshot("ETH-USD", 1))], pts=1)
    box.apply([to_pb(e) for e in m.generate("BTC-USD", 300, ts=5)], pts=2)
    box.discard()
    drain = box.take(pts=3)
    assert not drain.books and not drain.trades, "discarded: nothing left to publish"
    assert drain.instruments is not None, "the instrument list stays due until a leader writes it"
    box.republish_all()  # the lease was taken
    books = {k: schema.decode(p) for k, p in box.take(pts=4).books}
    assert set(books) == {b"md:book:BTC-USD", b"md:book:ETH-USD"}
    btc = books[b"md:book:BTC-USD"]
    assert (btc["seq"], btc["checksum"], btc["ts"]) == (m.book("BTC-USD").seq, m.book("BTC-USD").checksum(), 5)


def test_a_standby_without_coalescing_drops_its_pending_snapshots() -> None:
    m, box = model((BTC,)), queue((BTC,), coalesce=False)
    box.apply([to_pb(m.snapshot("BTC-USD", 1))], pts=1)
    box.apply([to_pb(e) for e in m.generate("BTC-USD", 20, ts=2)], pts=2)
    box.discard()
    assert not box.take(pts=3).books and box.stats.dropped == 0
    box.republish_all()
    (_key, payload), = box.take(pts=4).books
    assert schema.decode(payload)["seq"] == m.book("BTC-USD").seq


def test_tally_counts_what_each_script_published_and_returns_the_refusals() -> None:
    m, box = model(), queue()
    box.apply([to_pb(m.snapshot("BTC-USD", 1)), to_pb(m.snapshot("ETH-USD", 1))], pts=1)
    box.apply([to_pb(e) for e in m.generate("BTC-USD", 3000, ts=2)], pts=2)
    drain = box.take(pts=3)
    commands = drain_commands(drain, b"md:instruments", history=3, fence=LEASE)
    stats = IngestStats()
    assert tally(commands, [0, 2, 40], stats) == []
    assert (stats.publishes, stats.trade_publishes, stats.drains) == (2, 40, 1)
    refused = Exception("FENCED 8 ingest:there:2:def")
    assert tally(commands, [0, refused, 5], stats) == [refused]
    assert (stats.publishes, stats.trade_publishes, stats.drains) == (2, 45, 2)
    assert tally(commands, [refused] * 3, stats) == [refused] * 3
    assert stats.drains == 2, "a round trip that wrote nothing is not a drain"


def test_a_drain_with_deltas_publishes_each_just_before_its_snapshot_in_one_script() -> None:
    m, box = model(), queue()
    box.apply([to_pb(m.snapshot("BTC-USD", 1)), to_pb(m.snapshot("ETH-USD", 1))], pts=1)
    box.take(pts=2)
    box.apply([to_pb(e) for e in m.generate("BTC-USD", 50, ts=2)], pts=3)
    box.apply([to_pb(e) for e in m.generate("ETH-USD", 1, ts=3)], pts=3)
    drain = box.take(pts=4)
    assert [k for k, _ in drain.books] == [b"md:book:BTC-USD", b"md:book:ETH-USD"]
    assert [d[0] for d in drain.deltas if d] == [b"md:delta:BTC-USD", b"md:delta:ETH-USD"]
    btc = schema.decode(drain.deltas[0][1])  # type: ignore[index]
    assert btc["prev_seq"] == 0 and btc["seq"] == m.book("BTC-USD").seq and btc["checksum"] == m.book("BTC-USD").checksum()
    assert btc["bids"] or btc["asks"], "50 events changed some level"
    eth = schema.decode(drain.deltas[1][1])  # type: ignore[index]
    assert (eth["seq"], eth["prev_seq"]) == (1, 0)
    command = drain_commands(drain, b"md:instruments", history=3, fence=LEASE)[0]  # the list went out before
    channels = [d[0] for d in drain.deltas if d]
    payloads = [d[1] for d in drain.deltas if d]
    assert command[2:] == (b"3", LEASE.key, b"md:book:BTC-USD", b"md:book:ETH-USD", LEASE.value,
                           *(p for _, p in drain.books), *channels, *payloads)
    assert command[1].startswith(FENCE) and b"PUBLISH', ARGV[i + n]" in command[1]
    stats = IngestStats()
    tally([command], [2], stats)
    assert (stats.publishes, stats.delta_publishes) == (2, 2)
