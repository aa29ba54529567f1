"""Book deltas (marketdata.delta): what the ingestor publishes applies, on a reader's side, to exactly the next book."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata import delta, schema
from marketdata.book import checksum
from marketdata.errors import MessageError
from marketdata.ingest.publish_queue import IngestStats, PublishQueue
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.settings import IngestSettings
from marketdata.v1 import market_data_pb2 as pb

BTC, EUR = DEFAULT_INSTRUMENTS[0], DEFAULT_INSTRUMENTS[5]
DEPTH = 10

# A side: up to 16 levels on a grid of 24 prices, so levels enter and leave the depth of 10.
sides = st.dictionaries(st.integers(min_value=1, max_value=24), st.integers(min_value=1, max_value=5), max_size=16)
books = st.tuples(sides, sides)


def best_first(levels: dict[int, int], descending: bool) -> list[tuple[int, int]]:
    return sorted(levels.items(), reverse=descending)


def snapshot_event(seq: int, bids: dict[int, int], asks: dict[int, int], epoch: int = 5) -> pb.Event:
    ev = pb.Event(instrument=BTC.id, seq=seq, ts=1000 + seq, epoch=epoch)
    ev.snapshot.bids.extend(pb.Level(side=1, price=p, size=s) for p, s in bids.items())
    ev.snapshot.asks.extend(pb.Level(side=2, price=p + 100, size=s) for p, s in asks.items())
    return ev


def published(sequence: list[tuple[dict[int, int], dict[int, int]]], epoch: int = 5) -> list[tuple[bytes, bytes | None]]:
    """Each book of `sequence` through the ingestor's queue, a drain apiece: (snapshot, delta or None)."""
    queue = PublishQueue((BTC,), IngestSettings(depth=DEPTH), IngestStats())
    out = []
    for seq, (bids, asks) in enumerate(sequence, start=1):
        queue.apply([snapshot_event(seq * 3, bids, asks, epoch)], pts=seq)
        drain = queue.take(pts=seq)
        (key, snap), = drain.books
        assert key == b"md:book:BTC-USD"
        d = drain.deltas[0] if drain.deltas else None
        if d is not None:
            assert d[0] == b"md:delta:BTC-USD"
        out.append((snap, d[1] if d else None))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(books, min_size=1, max_size=12))
def test_deltas_applied_to_the_first_snapshot_give_every_later_book_exactly(sequence: list[tuple[dict[int, int], dict[int, int]]]) -> None:
    out = published(sequence)
    assert out[0][1] is None, "the first book of an epoch has no delta"
    replica = delta.Replica(BTC)
    assert replica.snapshot(schema.decode(out[0][0])) == delta.TAKEN
    for snap, changes in out[1:]:
        assert changes is not None, "every later book of the epoch has a delta"
        want = schema.decode(snap)
        got = schema.decode(changes)
        assert (got["epoch"], got["seq"], got["ts"], got["pts"]) == (want["epoch"], want["seq"], want["ts"], want["pts"])
        assert replica.delta(got) == delta.APPLIED
        assert replica.bids == schema.units(want["bids"], BTC) and replica.asks == schema.units(want["asks"], BTC)
        assert checksum(replica.bids, replica.asks) == want["checksum"] == got["checksum"]
        assert len(replica.bids) <= DEPTH and len(replica.asks) <= DEPTH, "nothing for the reader to truncate"


@settings(max_examples=500, deadline=None)
@given(sides, sides, st.booleans())
def test_diff_then_apply_turns_one_side_into_the_other(old: dict[int, int], new: dict[int, int], descending: bool) -> None:
    a, b = best_first(old, descending), best_first(new, descending)
    changes = delta.diff(a, b, descending)
    assert delta.apply(a, changes, descending) == b
    assert [p for p, _ in changes] == [p for p, _ in best_first(dict(changes), descending)], "changes are best first"
    assert all(s == 0 for p, s in changes if p not in new), "a level gone is written with size 0"
    assert all(new[p] == s and old.get(p) != s for p, s in changes if p in new), "only what changed"


def test_a_level_pushed_below_the_depth_leaves_with_size_0_and_one_rising_enters() -> None:
    bids = {20 - i: 1 for i in range(DEPTH + 2)}  # 12 levels, 10 published
    first, second = published([(bids, {}), ({**bids, 21: 4}, {})])  # a better bid pushes 10 out of the depth
    d = schema.decode(second[1])
    assert d["bids"] == [[BTC.price(21), BTC.size(4)], [BTC.price(11), 0.0]] and d["asks"] == []
    assert d["prev_seq"] == schema.decode(first[0])["seq"]
    third = published([(bids, {}), ({p: s for p, s in bids.items() if p != 20}, {})])[1]
    assert schema.decode(third[1])["bids"] == [[BTC.price(20), 0.0], [BTC.price(10), BTC.size(1)]], "a level rises into the depth"


def test_no_delta_across_epochs_after_republish_or_for_a_standby() -> None:
    queue = PublishQueue((BTC,), IngestSettings(depth=DEPTH), IngestStats())

    def drain(seq: int, epoch: int = 5) -> bool:
        queue.apply([snapshot_event(seq, {1: seq}, {2: 1}, epoch)], pts=seq)
        return bool(queue.take(pts=seq).deltas)

    assert not drain(1) and drain(2)
    assert not drain(3, epoch=6), "a new epoch starts without a delta"
    assert drain(4, epoch=6)
    queue.republish_all()
    assert not drain(5, epoch=6), "after a republish readers resync from the snapshot"
    assert drain(6, epoch=6)
    queue.apply([snapshot_event(7, {1: 7}, {2: 1}, 6)], pts=7)
    queue.discard()  # a standby's turn
    queue.republish_all()  # it takes the lease
    assert not drain(8, epoch=6)
    assert queue.stats.publishes == 0, "tally counts, not take"


def test_without_coalescing_every_event_has_its_delta_and_dropped_books_cut_the_chain() -> None:
    queue = PublishQueue((BTC,), IngestSettings(depth=DEPTH, coalesce=False), IngestStats())
    queue.apply([snapshot_event(1, {1: 1}, {2: 1})], pts=1)
    update = pb.Event(instrument=BTC.id, seq=2, ts=2, epoch=5)
    update.update.changes.append(pb.Level(side=1, price=1, size=3))
    queue.apply([update], pts=2)
    drain = queue.take(pts=3)
    assert drain.deltas[0] is None and drain.deltas[1] is not None
    assert schema.decode(drain.deltas[1][1])["bids"] == [[BTC.price(1), BTC.size(3)]]
    queue.apply([snapshot_event(3, {1: 4}, {2: 1})], pts=4)
    queue.republish_all()  # Redis came back: what waits goes out without its delta
    assert queue.take(pts=5).deltas == []


def test_replica_waits_for_a_snapshot_after_a_gap_or_a_mismatch() -> None:
    out = published([({5: 1}, {5: 1}), ({5: 2}, {5: 1}), ({5: 3}, {5: 1}), ({5: 4}, {5: 1})])
    msgs = [schema.decode(s) for s, _ in out]
    deltas = [schema.decode(d) for _, d in out[1:] if d]
    r = delta.Replica(BTC)
    assert r.delta(deltas[0]) == delta.WAITING, "no book yet"
    assert r.snapshot(msgs[0]) == delta.TAKEN
    assert r.delta(deltas[1]) == delta.GAP and not r.valid
    assert r.delta(deltas[2]) == delta.WAITING
    assert r.snapshot(msgs[0]) == delta.TAKEN, "the resync answer may be the very book held"
    assert r.delta(deltas[0]) == delta.APPLIED and r.delta(deltas[0]) == delta.STALE
    assert r.snapshot(msgs[1]) == delta.STALE, "a snapshot the deltas brought already"
    bad = {**deltas[1], "checksum": deltas[1]["checksum"] ^ 1}
    assert r.delta(bad) == delta.MISMATCH and r.seq == msgs[1]["seq"], "a delta that fails is not applied"
    assert r.snapshot({**msgs[3], "checksum": 1}) == delta.MISMATCH and not r.valid
    assert r.snapshot(msgs[3]) == delta.TAKEN and r.valid
    assert r.delta({**deltas[2], "epoch": 9, "seq": 99, "prev_seq": 98}) == delta.STALE, "another run's delta"


def test_delta_message_fields_in_order_and_decode() -> None:
    payload = schema.encode_delta(EUR, 7, 12, 10, [(108501, 2)], [(108502, 0)], ts=5, pts=6, checksum=42)
    assert list(orjson.loads(payload)) == ["v", "type", "instrument", "epoch", "seq", "prev_seq", "ts", "pts", "bids", "asks", "checksum"]
    assert payload.startswith(b'{"v":1,"type":"delta","instrument":"EUR-USD","epoch":7,"seq":12,"prev_seq":10,')
    msg = schema.decode(payload)
    assert msg["bids"] == [[1.08501, 2000.0]] and msg["asks"] == [[1.08502, 0.0]]
    assert schema.peek_order(payload) == (7, 12)
    with pytest.raises(MessageError, match="prev_seq"):
        schema.decode(payload.replace(b'"prev_seq":10', b'"prev_seq":12'))
    with pytest.raises(MessageError, match="lacks prev_seq"):
        schema.decode(payload.replace(b'"prev_seq":10,', b""))
    with pytest.raises(MessageError, match="bad levels"):
        delta.Replica(EUR).snapshot({**msg, "type": "book", "bids": "nope"})
