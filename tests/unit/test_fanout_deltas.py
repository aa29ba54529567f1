"""Deltas on the hot path without Redis: each verified once, on top of the book forwarded last, or not at all."""

from __future__ import annotations

import random

import pytest

from marketdata import schema
from marketdata.ingest.publish_queue import IngestStats, PublishQueue
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.settings import IngestSettings
from marketdata.sim.model import Model
from tests.unit.bridge_fakes import BOOK, Sink
from tests.unit.test_fanout import E1, Rig, rig  # noqa: F401 (fixture)
from tests.unit.test_publish_queue import to_pb

BTC = DEFAULT_INSTRUMENTS[0]
DELTA = b"md:delta:BTC-USD"


def published(n: int, epoch: int = E1, seed: int = 3) -> list[tuple[bytes, bytes | None]]:
    """n books of BTC-USD as the ingestor publishes them, each (snapshot, its delta or None)."""
    model = Model((BTC,), random.Random(seed))
    queue = PublishQueue((BTC,), IngestSettings(), IngestStats())
    first = to_pb(model.snapshot(BTC.id, 1))
    first.epoch = epoch
    out = []
    for i in range(n):
        events = [first] if i == 0 else [to_pb(e) for e in model.generate(BTC.id, 3, ts=10 + i)]
        for ev in events:
            ev.epoch = epoch
        queue.apply(events, pts=i)
        drain = queue.take(pts=i)
        out.append((drain.books[0][1], drain.deltas[0][1] if drain.deltas and drain.deltas[0] else None))
    return out


def seq(payload: bytes) -> int:
    return schema.decode(payload)["seq"]


def wire(rig: Rig, snapshots: Sink, deltas: Sink) -> None:
    rig.want(snapshots)
    rig.want(deltas)
    topic = rig.want(deltas, DELTA)
    topic.trades, topic.deltas, topic.book_channel = False, True, BOOK


@pytest.mark.asyncio
async def test_a_delta_goes_to_delta_sockets_only_on_top_of_the_book_forwarded_last(rig: Rig) -> None:
    snapshots, deltas = Sink(), Sink()
    wire(rig, snapshots, deltas)
    books = published(5)
    rig.start(books[0][0])
    for snap, d in books[1:3]:
        rig.publish(d, DELTA)
        rig.publish(snap)
    assert snapshots.seqs() == deltas.seqs() == [seq(s) for s, _ in books[:3]], "the sockets' slots sort out who needs which"
    assert [(p, s) for _, p, s in deltas.deltas] == [(seq(books[0][0]), seq(books[1][0])), (seq(books[1][0]), seq(books[2][0]))]
    assert all(key == BOOK for key, _, _ in deltas.deltas), "a delta goes into the slot of its books"
    assert snapshots.deltas == []
    rig.publish(books[4][1], DELTA)  # the delta to book 4 before book 3 was read: it does not apply
    assert rig.fanout.deltas_unchained == 1 and len(deltas.deltas) == 2
    assert rig.fanout.deltas_forwarded == 2


@pytest.mark.asyncio
async def test_a_delta_that_does_not_give_its_checksum_is_rejected(rig: Rig) -> None:
    snapshots, deltas = Sink(), Sink()
    wire(rig, snapshots, deltas)
    books = published(2)
    rig.start(books[0][0])
    d = schema.decode(books[1][1])
    forged = books[1][1].replace(b'"checksum":%d' % d["checksum"], b'"checksum":%d' % (d["checksum"] ^ 1))
    rig.publish(forged, DELTA)
    rig.publish(schema.encode_trade(BTC, 5, 1, 1, 1, 1, E1), DELTA)  # not a delta at all
    assert deltas.deltas == []
    assert rig.stats.books_rejected["checksum"] == 1 and rig.stats.books_rejected["channel"] == 1
    rig.publish(books[1][1], DELTA)
    assert len(deltas.deltas) == 1, "the real one still goes"


@pytest.mark.asyncio
async def test_a_read_that_conflates_books_skips_the_deltas_before_the_newest(rig: Rig) -> None:
    snapshots, deltas = Sink(), Sink()
    wire(rig, snapshots, deltas)
    books = published(6)
    rig.start(books[0][0])
    batch = []
    for snap, d in books[1:4]:
        batch += [(DELTA, d), (BOOK, snap)]
    batch.append((DELTA, books[4][1]))  # read before its snapshot: applies to the newest of the read
    rig.fanout.deliver_batch(batch)
    assert snapshots.seqs() == [seq(books[0][0]), seq(books[3][0])]
    assert [s for _, _, s in deltas.deltas] == [seq(books[4][0])], "only the delta after the newest book of the read"
    assert rig.stats.bus_conflated == 2 + 3
    assert rig.fanout.deltas_unchained == 0
