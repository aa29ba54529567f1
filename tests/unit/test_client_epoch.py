"""The CLI client and the simulator's epochs: a new epoch is a reset, and what was verified is told by (epoch, seq)."""

from __future__ import annotations

import logging

import orjson
import pytest

from marketdata.book import BID, checksum
from marketdata.client.terminal import Consumer, Rates
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.v1 import market_data_pb2 as pb

BTC = DEFAULT_INSTRUMENTS[0]


def snap(seq: int, epoch: int, bids: list[tuple[int, int]], crc: bool = True) -> pb.Event:
    ev = pb.Event(instrument="BTC-USD", seq=seq, ts=seq, epoch=epoch)
    ev.snapshot.bids.extend(pb.Level(side=pb.SIDE_BID, price=p, size=s) for p, s in bids)
    ev.snapshot.asks.add(side=pb.SIDE_ASK, price=700_000, size=1)
    if crc:
        ev.checksum = checksum(bids, [(700_000, 1)])
    return ev


def test_a_new_epoch_replaces_the_book_and_its_lines_say_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="marketdata.client.terminal")
    consumer = Consumer([BTC])
    bids = [(650_000, 5)]
    after = checksum([(650_000, 5), (649_999, 1)], [(700_000, 1)])
    consumer.apply([snap(100, 5, bids)])
    updates = consumer.apply([pb.Event(instrument="BTC-USD", seq=101, ts=101, epoch=5, checksum=after,
                                       update=pb.Update(changes=[pb.Level(side=BID, price=649_999, size=1)]))])
    line = orjson.loads(consumer.line("BTC-USD", updates["BTC-USD"]))
    assert (line["epoch"], line["seq"], line["verified"]) == (5, 101, True)
    assert not [r for r in caplog.records if "epoch" in r.getMessage()], "the first epoch is no change"

    # The simulator restarted; its snapshot happens to be at the same seq, and carries no checksum.
    updates = consumer.apply([snap(101, 9, [(640_000, 2)], crc=False)])
    line = orjson.loads(consumer.line("BTC-USD", updates["BTC-USD"]))
    assert (line["epoch"], line["seq"], line["bid"]) == (9, 101, 64000.0), "replaced, not merged"
    assert line["verified"] is False, "seq 101 was verified in epoch 5, not in epoch 9"
    assert consumer.view("BTC-USD", 5, None).verified is False
    assert [r.getMessage() for r in caplog.records] == ["simulator epoch changed: 5 -> 9; books replaced by its snapshots"]


def test_a_new_epoch_starts_a_new_rate_window() -> None:
    rates = Rates()
    rates.observe("A", 100, now=10.0, epoch=1)
    assert rates.observe("A", 300, now=11.0, epoch=1) == pytest.approx(200.0)
    # A restart whose seqs are already past the old ones would otherwise read as a burst.
    assert rates.observe("A", 5000, now=11.5, epoch=2) == pytest.approx(200.0)
    assert rates.observe("A", 5100, now=12.5, epoch=2) == pytest.approx(100.0)
