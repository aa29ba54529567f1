"""The CLI client's shell (marketdata.client.terminal), its pure parts: the consumer's verified
updates, event rates, the choice of instruments, and failed calls as one line."""

from __future__ import annotations

import grpc
import orjson
import pytest

from marketdata.book import ASK, BID, checksum
from marketdata.client.ladder import BookView
from marketdata.client.terminal import (
    Consumer,
    Disagreement,
    NotListed,
    Rates,
    SimUnreachable,
    _rpc_error,
    choose,
)
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.v1 import market_data_pb2 as pb

BY_ID = {i.id: i for i in DEFAULT_INSTRUMENTS}
BTC = BY_ID["BTC-USD"]  # tick 0.1, lot 0.0001
EUR = BY_ID["EUR-USD"]  # tick 0.00001, lot 1000


# -- the consumer: what --json prints ------------------------------------------------------


def snap(name: str, seq: int, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> pb.Event:
    ev = pb.Event(instrument=name, seq=seq, ts=1_000 + seq, checksum=checksum(bids, asks))
    ev.snapshot.bids.extend(pb.Level(side=pb.SIDE_BID, price=p, size=s) for p, s in bids)
    ev.snapshot.asks.extend(pb.Level(side=pb.SIDE_ASK, price=p, size=s) for p, s in asks)
    return ev


def upd(name: str, seq: int, changes: list[tuple[int, int, int]], crc: int | None = None) -> pb.Event:
    ev = pb.Event(instrument=name, seq=seq, ts=1_000 + seq)
    ev.update.changes.extend(pb.Level(side=sd, price=p, size=s) for sd, p, s in changes)
    if crc is not None:
        ev.checksum = crc
    return ev


def test_one_update_per_changed_instrument_per_batch_with_decimals() -> None:
    consumer = Consumer([BTC, EUR])
    bids, asks = [(650000, 12000)], [(650001, 300)]
    updates = consumer.apply([snap("BTC-USD", 10, bids, asks)])
    assert list(updates) == ["BTC-USD"]  # EUR-USD had no event: no update
    after = checksum([(650000, 12000), (649999, 5)], [(650001, 300)])
    batch = [upd("BTC-USD", 11, [(BID, 649999, 5)]), upd("BTC-USD", 12, [(ASK, 650002, 0)], crc=after)]
    updates = consumer.apply(batch)
    assert list(updates) == ["BTC-USD"]  # two events, one update
    line = consumer.line("BTC-USD", updates["BTC-USD"])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == {
        "instrument": "BTC-USD",
        "epoch": 0,
        "seq": 12,
        "ts": 1_012,
        "bid": 65000.0,
        "bid_size": 1.2,
        "ask": 65000.1,
        "ask_size": 0.03,
        "spread": 0.1,
        "spread_bps": round(0.1 / 65000.05 * 1e4, 4),
        "mid": 65000.05,
        "checksum": after,
        "verified": True,
    }


def test_an_update_without_a_checksum_is_not_verified() -> None:
    consumer = Consumer([BTC])
    consumer.apply([snap("BTC-USD", 1, [(10, 1)], [(12, 1)])])
    updates = consumer.apply([upd("BTC-USD", 2, [(BID, 11, 1)])])
    record = orjson.loads(consumer.line("BTC-USD", updates["BTC-USD"]))
    assert record["verified"] is False
    assert record["checksum"] == checksum([(11, 1), (10, 1)], [(12, 1)])  # ours, since none came
    assert consumer.view("BTC-USD", 5, None).verified is False


def test_events_before_the_snapshot_make_no_update() -> None:
    consumer = Consumer([BTC])
    assert consumer.apply([upd("BTC-USD", 7, [(BID, 11, 1)])]) == {}
    assert consumer.view("BTC-USD", 5, None).seq is None


@pytest.mark.parametrize(
    ("event", "says"),
    [
        (upd("BTC-USD", 3, [(BID, 11, 1)]), "sequence gap, expected seq 2, got 3"),
        (upd("BTC-USD", 2, [(BID, 11, 1)], crc=123), "checksum mismatch at seq 2"),
        (upd("ETH-USD", 1, [(BID, 11, 1)]), "did not subscribe"),
    ],
)
def test_a_disagreement_with_the_exchange_is_one_clear_error(event: pb.Event, says: str) -> None:
    consumer = Consumer([BTC])
    consumer.apply([snap("BTC-USD", 1, [(10, 1)], [(12, 1)])])
    with pytest.raises(Disagreement, match=says) as info:
        consumer.apply([event])
    assert "\n" not in str(info.value)


def test_view_takes_the_best_levels_at_a_batch_boundary() -> None:
    consumer = Consumer([BTC])
    consumer.apply([snap("BTC-USD", 4, [(10, 1), (9, 2), (8, 3)], [(12, 1), (13, 2)])])
    view = consumer.view("BTC-USD", 2, 5.0)
    assert view == BookView(BTC, 4, ((10, 1), (9, 2)), ((12, 1), (13, 2)), True, 5.0)


def test_rates_count_events_by_seq() -> None:
    rates = Rates()
    assert rates.observe("A", 100, now=10.0) is None
    assert rates.observe("A", 150, now=10.5) is None  # less than a window
    assert rates.observe("A", 300, now=11.0) == pytest.approx(200.0)
    assert rates.observe("A", 10, now=11.5) == pytest.approx(200.0)  # seq went back: window restarts


# -- connecting ----------------------------------------------------------------------------


def listing() -> list[pb.Instrument]:
    return [
        pb.Instrument(id=i.id, kind=i.kind, description=i.description, tick_size=i.tick_size, lot_size=i.lot_size,
                      price_decimals=i.price_decimals, size_decimals=i.size_decimals)
        for i in DEFAULT_INSTRUMENTS[:3]
    ]  # fmt: skip


def test_choose_keeps_the_order_asked_and_names_what_is_missing() -> None:
    assert [i.id for i in choose(listing(), (), "h:1")] == ["BTC-USD", "ETH-USD", "SOL-USD"]
    assert [i.id for i in choose(listing(), ("SOL-USD", "BTC-USD"), "h:1")] == ["SOL-USD", "BTC-USD"]
    with pytest.raises(NotListed) as info:
        choose(listing(), ("BTC-USD", "NOPE"), "h:1")
    assert str(info.value) == "unknown instrument 'NOPE': the simulator at h:1 lists BTC-USD, ETH-USD, SOL-USD"


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_failed_calls_become_one_line_a_user_can_act_on() -> None:
    refused = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"
    err = _rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, refused), "127.0.0.1:1", connected=False)
    assert isinstance(err, SimUnreachable)
    assert str(err) == "cannot reach simulator at 127.0.0.1:1 (connection refused); is `marketdata sim` running?"
    err = _rpc_error(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "h:2", connected=False)
    assert "cannot reach simulator at h:2 (no answer within" in str(err)
    err = _rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "h:3", connected=True)
    assert str(err) == "lost the simulator at h:3 (connection closed)"
    err = _rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "unknown instrument 'X'"), "h:4", connected=True)
    assert "unknown instrument 'X'" in str(err)
