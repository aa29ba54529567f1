"""The publish queue and the simulator's epochs: carried into every message, a new run replaces the books."""

from __future__ import annotations

import random

import pytest

from marketdata import schema
from marketdata.errors import EpochMismatch
from marketdata.ingest.publish_queue import IngestStats, PublishQueue
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument
from marketdata.settings import IngestSettings
from marketdata.sim.model import Model
from marketdata.sim.wire import WireEncoder
from marketdata.v1 import market_data_pb2 as pb

BTC, ETH = DEFAULT_INSTRUMENTS[0], DEFAULT_INSTRUMENTS[1]
OLD, NEW = 1_764_050_000_000_000, 1_764_050_042_000_000  # two runs' epochs, µs since the Unix epoch


def queue(coalesce: bool) -> PublishQueue:
    return PublishQueue((BTC, ETH), IngestSettings(coalesce=coalesce, depth=25), IngestStats())


def run(seed: int, epoch: int) -> Model:
    return Model((BTC, ETH), random.Random(seed), epoch=epoch)


def snapshots(m: Model) -> list[pb.Event]:
    """Every book of `m` as the simulator sends it at the start of a stream."""
    return list(pb.EventBatch.FromString(WireEncoder.snapshots([m.snapshot(i.id, 1) for i in (BTC, ETH)])).events)


def events(m: Model, count: int) -> list[pb.Event]:
    """The next `count` events of each instrument, through the simulator's encoder."""
    encoder = WireEncoder()
    data = b"".join(encoder.events(m.generate(i.id, count, 2)) for i in (BTC, ETH))
    return list(pb.EventBatch.FromString(data).events)


def levels(inst: Instrument, msg: dict) -> list[tuple[int, int]]:
    return [(inst.ticks(str(p)), round(s * inst.size_scale / inst.lot_units)) for p, s in msg["bids"]]


@pytest.mark.parametrize("coalesce", [True, False])
def test_books_and_trades_carry_the_epoch_of_the_run(coalesce: bool) -> None:
    m, q = run(3, OLD), queue(coalesce)
    assert q.epoch is None
    q.apply(snapshots(m), pts=1)
    q.apply(events(m, 400), pts=1)
    drain = q.take(pts=2)
    books = [schema.decode(p) for _, p in drain.books]
    trades = [schema.decode(p) for payloads in drain.trades.values() for p in payloads]
    assert books and trades, "400 events of each instrument print some trades"
    assert {msg["epoch"] for msg in books + trades} == {OLD}
    assert {schema.peek_order(p)[0] for _, p in drain.books} == {OLD}
    assert q.epoch == OLD


@pytest.mark.parametrize("coalesce", [True, False])
def test_a_new_run_replaces_the_books_and_its_seqs_start_again(coalesce: bool) -> None:
    old, q = run(3, OLD), queue(coalesce)
    q.apply(snapshots(old), pts=1)
    q.apply(events(old, 500), pts=1)
    q.take(pts=2)
    # The simulator restarts: another market (another seed), seqs from 0, a new epoch.
    new = run(4, NEW)
    q.apply(snapshots(new), pts=3)
    q.apply(events(new, 20), pts=3)
    assert q.epoch == NEW
    drain = q.take(pts=4)
    latest = {key: schema.decode(p) for key, p in drain.books}
    for inst in (BTC, ETH):
        msg, truth = latest[f"md:book:{inst.id}".encode()], new.book(inst.id)
        assert (msg["epoch"], msg["seq"]) == (NEW, 20)
        assert msg["checksum"] == truth.checksum()
        assert levels(inst, msg) == truth.bids(25), "the new run's book, not a merge with the old one"
    orders = [schema.peek_order(p) for _, p in drain.books]
    assert all(epoch == NEW for epoch, _ in orders) and len(orders) == (2 if coalesce else 42)
    # A late event of the old run cannot touch the new books: it breaks them until fresh snapshots.
    with pytest.raises(EpochMismatch):
        q.apply(events(old, 1), pts=5)
    assert not q.take(pts=6).books
