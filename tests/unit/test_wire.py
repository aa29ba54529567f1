"""The hand-written wire encoder writes exactly what protobuf writes."""

from __future__ import annotations

import random

from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.sim.model import Event, Events, Model, Trade, Update
from marketdata.sim.wire import WireEncoder, encode_events
from marketdata.v1 import market_data_pb2 as pb

IDS = [inst.id for inst in DEFAULT_INSTRUMENTS]
TS = 1_700_000_000_123_456


def reference(event: Event) -> pb.Event:
    """The protobuf library's own rendering of a model event."""
    msg = pb.Event(instrument=event.instrument, seq=event.seq, ts=event.ts, epoch=event.epoch)
    if isinstance(event.body, Update):
        msg.update.changes.extend([pb.Level(side=s, price=p, size=z) for s, p, z in event.body.changes])
    else:
        assert isinstance(event.body, Trade)
        msg.trade.price, msg.trade.size, msg.trade.aggressor = event.body
    if event.checksum is not None:
        msg.checksum = event.checksum
    return msg


def test_generated_blocks_encode_as_protobuf_does() -> None:
    model = Model(DEFAULT_INSTRUMENTS, random.Random(2))
    encoder = WireEncoder()
    blocks = [model.generate(name, n, TS) for name in IDS for n in (1, 9, 400)]
    blocks.append(model.generate("AAPL", 5, TS, checksum=False))
    # Large numbers and long updates: multi-byte lengths and varints everywhere.
    walk = tuple((2, 650_000 + i, 10**9 + i) for i in range(12)) + ((1, 649_999, 0),)
    blocks.append(Events("BTC-USD", 2**40, 2**62, (Trade(650_000, 7, 1), Update(walk)), checksum=0xFFFFFFFF))
    blocks.append(Events("BTC-USD", 1, TS, (Update(((1, 1, 1),)),), checksum=0))
    # Epochs, small and large, with and without a checksum: the epoch is written last, as protobuf does.
    run = Model(DEFAULT_INSTRUMENTS, random.Random(2), epoch=1_764_050_000_123_456)
    blocks += [run.generate(name, n, TS, checksum=n != 3) for name in IDS[:3] for n in (1, 3, 150)]
    blocks.append(Events("BTC-USD", 7, TS, (Trade(1, 1, 2), Update(walk)), checksum=9, epoch=1))
    blocks.append(Events("BTC-USD", 7, TS, (Trade(1, 1, 2),), epoch=2**64 - 1))
    for events in blocks:
        expected = pb.EventBatch(events=[reference(ev) for ev in events]).SerializeToString()
        assert encoder.events(events) == expected, events
        assert encode_events(events) == expected


def test_blocks_concatenate_into_one_batch() -> None:
    model = Model(DEFAULT_INSTRUMENTS[:2], random.Random(3))
    encoder = WireEncoder()
    a, b = model.generate(IDS[0], 30, TS), model.generate(IDS[1], 20, TS)
    batch = pb.EventBatch.FromString(encoder.events(a) + encoder.events(b))
    assert [e.instrument for e in batch.events] == [IDS[0]] * 30 + [IDS[1]] * 20
    assert batch.events[29].checksum == a.checksum and batch.events[49].checksum == b.checksum


def test_snapshots_and_mixed_events() -> None:
    model = Model(DEFAULT_INSTRUMENTS, random.Random(4), epoch=42)
    snaps = [model.snapshot(name, TS) for name in IDS]
    batch = pb.EventBatch.FromString(WireEncoder.snapshots(snaps))
    for msg, snap in zip(batch.events, snaps, strict=True):
        assert msg.WhichOneof("body") == "snapshot" and msg.checksum == snap.checksum and msg.epoch == 42
        assert [(lv.price, lv.size) for lv in msg.snapshot.bids] == list(snap.body.bids)  # type: ignore[union-attr]
        assert all(lv.side == pb.SIDE_ASK for lv in msg.snapshot.asks)
    mixed = [snaps[0], *model.generate(IDS[0], 10, TS)]
    decoded = pb.EventBatch.FromString(encode_events(mixed)).events
    kinds = [e.WhichOneof("body") for e in decoded]
    assert kinds[0] == "snapshot" and set(kinds[1:]) <= {"update", "trade"}
    assert {e.epoch for e in decoded} == {42}
