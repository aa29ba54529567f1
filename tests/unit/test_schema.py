"""The Redis message schema: exact decimals at the edge, strict decoding, (epoch, seq) without parsing."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata import schema
from marketdata.book import ASK, BID, OrderBook
from marketdata.errors import MessageError
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument, select
from marketdata.slots import key_slot

BTC, EUR, ES = select(["BTC-USD", "EUR-USD", "ES-DEC26"])


def book_of(inst: Instrument, seq: int, bids: list[tuple[int, int]], asks: list[tuple[int, int]], epoch: int = 0) -> OrderBook:
    book = OrderBook(inst.id)
    book.reset(seq, bids, asks, epoch)
    return book


def test_encode_book_fields_and_decimals() -> None:
    # EUR-USD: tick 0.00001 (5 decimals), lot 1000
    book = book_of(EUR, 42, bids=[(108499, 3), (108498, 1)], asks=[(108501, 2)], epoch=1_764_049_000_000_001)
    payload = schema.encode_book(EUR, book, 25, ts=1_764_050_000_123_456, pts=1_764_050_000_123_789, checksum=book.checksum())
    # The head the bridge, the browser and the load generator read without parsing: epoch after the times.
    assert payload.startswith(
        b'{"v":1,"type":"book","instrument":"EUR-USD","seq":42,"ts":1764050000123456,"pts":1764050000123789,"epoch":1764049000000001,'
    )
    assert b'"bids":[[1.08499,3000.0],[1.08498,1000.0]]' in payload
    assert b'"asks":[[1.08501,2000.0]]' in payload
    msg = orjson.loads(payload)
    assert list(msg) == ["v", "type", "instrument", "seq", "ts", "pts", "epoch", "bids", "asks", "checksum"]
    assert msg["ts"] == 1_764_050_000_123_456 and msg["pts"] == 1_764_050_000_123_789
    assert msg["checksum"] == book.checksum()


def test_encode_book_btc_lots() -> None:
    # BTC-USD: tick 0.1, lot 0.0001
    book = book_of(BTC, 7, bids=[(649999, 5312)], asks=[(650000, 1), (650001, 12345)])
    msg = orjson.loads(schema.encode_book(BTC, book, 25, 1, 2, 0))
    assert msg["bids"] == [[64999.9, 0.5312]]
    assert msg["asks"] == [[65000.0, 0.0001], [65000.1, 1.2345]]
    text = schema.encode_book(BTC, book, 25, 1, 2, 0)
    assert b"[65000.0,0.0001]" in text and b"[64999.9,0.5312]" in text


def test_encode_book_respects_depth_and_empty_sides() -> None:
    book = book_of(ES, 1, bids=[(22400 - i, 1) for i in range(40)], asks=[])
    msg = orjson.loads(schema.encode_book(ES, book, 10, 1, 2, 0))
    assert len(msg["bids"]) == 10 and msg["asks"] == []
    assert msg["bids"][0] == [5600.0, 1.0] and msg["bids"][1] == [5599.75, 1.0]


def test_encode_trade_fields() -> None:
    buy = orjson.loads(schema.encode_trade(BTC, 9, 123, price=650001, size=2500, aggressor=BID, epoch=77))
    assert buy == {"v": 1, "type": "trade", "instrument": "BTC-USD", "seq": 9, "ts": 123, "epoch": 77, "price": 65000.1, "size": 0.25, "side": "buy"}
    assert orjson.loads(schema.encode_trade(BTC, 9, 123, 650001, 2500, BID))["epoch"] == 0  # the old call still works
    sell = orjson.loads(schema.encode_trade(EUR, 10, 124, price=108500, size=1, aggressor=ASK))
    assert (sell["price"], sell["size"], sell["side"]) == (1.085, 1000.0, "sell")


def test_round_trip_through_decode() -> None:
    book = book_of(BTC, 5, bids=[(649999, 5312), (649998, 1)], asks=[(650000, 2500)], epoch=3)
    payload = schema.encode_book(BTC, book, 25, 11, 12, book.checksum())
    msg = schema.decode(payload)
    assert msg["type"] == "book" and msg["instrument"] == "BTC-USD" and (msg["epoch"], msg["seq"]) == (3, 5)
    # back to integers by the README's rule, the checksum is the book's
    ticks = [(BTC.ticks(str(p)), round(s * BTC.size_scale / BTC.lot_units)) for p, s in msg["bids"]]
    assert ticks == book.bids()
    assert schema.decode(payload.decode()) == msg  # str payloads too
    trade = schema.decode(schema.encode_trade(BTC, 6, 13, 650000, 1, ASK, epoch=3))
    assert (trade["type"], trade["epoch"], trade["seq"], trade["side"]) == ("trade", 3, 6, "sell")


def test_a_message_from_before_epochs_decodes_as_epoch_0() -> None:
    """`epoch` was added within version 1: a v1 message without it is still valid, of epoch 0."""
    old_book = b'{"v":1,"type":"book","instrument":"X","seq":9,"ts":1,"pts":2,"bids":[],"asks":[],"checksum":0}'
    old_trade = b'{"v":1,"type":"trade","instrument":"X","seq":9,"ts":1,"price":1.0,"size":1.0,"side":"buy"}'
    for payload in (old_book, old_trade):
        assert schema.decode(payload)["epoch"] == 0
        assert schema.peek_epoch(payload) == 0 and schema.peek_order(payload) == (0, 9)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"v":2,"type":"book"}', "unsupported schema version 2"),
        (b'{"type":"book"}', "unsupported schema version None"),
        (b'{"v":1,"type":"quote"}', "unknown message type 'quote'"),
        (b'{"v":1,"type":"book","instrument":"X","seq":1}', "book message lacks ts, pts, bids, asks, checksum"),
        (b'{"v":1,"type":"trade","instrument":"X","seq":1,"ts":1,"price":1}', "trade message lacks size, side"),
        (b'{"v":1,"type":"trade","instrument":"X","seq":"1","ts":1,"price":1,"size":1,"side":"buy"}', "seq must be an integer"),
        (b'{"v":1,"type":"trade","instrument":1,"seq":1,"ts":1,"price":1,"size":1,"side":"buy"}', "instrument a string"),
        (b'{"v":1,"type":"trade","instrument":"X","seq":1,"ts":1,"epoch":"7","price":1,"size":1,"side":"buy"}', "epoch must be"),
        (b'{"v":1,"type":"trade","instrument":"X","seq":1,"ts":1,"epoch":-7,"price":1,"size":1,"side":"buy"}', "epoch must be"),
        (b'{"v":1,"type":"trade","instrument":"X","seq":1,"ts":1,"epoch":true,"price":1,"size":1,"side":"buy"}', "epoch must be"),
    ],
)
def test_decode_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        schema.decode(payload)


def test_decode_oversized() -> None:
    book = book_of(BTC, 1, [(1, 1)], [])
    good = schema.encode_book(BTC, book, 25, 1, 2, 0)
    padded = good[:-1] + b"," + b'"x":"' + b"y" * schema.MAX_MESSAGE_BYTES + b'"}'
    with pytest.raises(MessageError, match="exceeds"):
        schema.decode(padded)
    assert isinstance(MessageError("x"), ValueError)


def test_peek_seq_on_encoded_messages() -> None:
    book = book_of(EUR, 123456789012, [(1, 1)], [(2, 1)])
    assert schema.peek_seq(schema.encode_book(EUR, book, 25, 1, 2, 0)) == 123456789012
    assert schema.peek_seq(schema.encode_trade(EUR, 77, 1, 1, 1, BID)) == 77
    book.reset(0)
    assert schema.peek_seq(schema.encode_book(EUR, book, 25, 1, 2, 0)) == 0


@settings(max_examples=200, deadline=None)
@given(
    inst=st.sampled_from(DEFAULT_INSTRUMENTS),
    epoch=st.integers(min_value=0, max_value=2**64 - 1),
    seq=st.integers(min_value=0, max_value=2**64 - 1),
    ts=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_peek_order_reads_what_the_encoders_wrote(inst: Instrument, epoch: int, seq: int, ts: int) -> None:
    book = book_of(inst, seq, [(1, 1)], [(2, 1)], epoch=epoch)
    for payload in (schema.encode_book(inst, book, 25, ts, ts, 0), schema.encode_trade(inst, seq, ts, 1, 1, ASK, epoch)):
        assert schema.peek_order(payload) == (epoch, seq)
        assert schema.peek_epoch(payload) == epoch and schema.peek_seq(payload) == seq
        msg = schema.decode(payload)
        assert (msg["epoch"], msg["seq"]) == (epoch, seq)


@pytest.mark.parametrize(
    "payload",
    [b"", b"garbage", b'{"v":2,"seq":1}', b'{"v":1,"type":"book"}', b'{"v":1,"seq":"7"}', b'{"v":1,"seq":-1}', b'{"v":1,"seq":'],
)
def test_peek_seq_on_garbage(payload: bytes) -> None:
    with pytest.raises(MessageError):
        schema.peek_seq(payload)
    with pytest.raises(MessageError):
        schema.peek_order(payload)


@pytest.mark.parametrize("payload", [b"", b"garbage", b'{"v":2,"seq":1,"epoch":1}', b'{"v":1,"seq":1,"epoch":"7"}', b'{"v":1,"seq":1,"epoch":-1}'])
def test_peek_epoch_on_garbage(payload: bytes) -> None:
    with pytest.raises(MessageError):
        schema.peek_epoch(payload)
    with pytest.raises(MessageError):
        schema.peek_order(payload)


def test_keys() -> None:
    keys = schema.Keys()
    assert keys.book("BTC-USD") == "md:book:BTC-USD"
    assert keys.trades("BTC-USD") == "md:trades:BTC-USD"
    assert keys.instruments == "md:instruments" and keys.heartbeat == "md:heartbeat"
    assert keys.book_pattern == "md:book:*"
    assert keys.instrument_of(b"md:book:ETH-USD") == "ETH-USD"
    assert schema.Keys("x").book("A") == "x:book:A"


def test_encode_instruments() -> None:
    listed = orjson.loads(schema.encode_instruments(DEFAULT_INSTRUMENTS))
    assert [i["id"] for i in listed] == [i.id for i in DEFAULT_INSTRUMENTS]
    assert listed[0] == {
        "id": "BTC-USD",
        "kind": "crypto",
        "description": "Bitcoin / US dollar",
        "tick_size": "0.1",
        "lot_size": "0.0001",
        "price_decimals": 1,
        "size_decimals": 4,
    }


@settings(max_examples=300, deadline=None)
@given(
    inst=st.sampled_from(DEFAULT_INSTRUMENTS),
    ticks=st.integers(min_value=0, max_value=10**11),
    lots=st.integers(min_value=1, max_value=10**11),
)
def test_json_numbers_convert_back_to_exact_integers(inst: Instrument, ticks: int, lots: int) -> None:
    """The README's rule recovers the integers, and the JSON text is the exact decimal."""
    payload = schema.encode_trade(inst, 1, 1, ticks, lots, BID)
    msg = schema.decode(payload)
    price, size = msg["price"], msg["size"]
    assert round(price * inst.price_scale / inst.tick_units) == ticks
    assert round(size * inst.size_scale / inst.lot_units) == lots
    # the number as written in the JSON is the decimal value itself, not a float near it
    text = payload.split(b'"price":', 1)[1].split(b",", 1)[0].decode()
    assert Decimal(text) == ticks * Decimal(inst.tick_size), text
    text = payload.split(b'"size":', 1)[1].split(b",", 1)[0].decode()
    assert Decimal(text) == lots * Decimal(inst.lot_size), text


def test_schema_reads_the_instrument_list_and_heartbeat() -> None:
    assert schema.decode_instruments(schema.encode_instruments(DEFAULT_INSTRUMENTS))[0].id == "BTC-USD"
    assert schema.heartbeat_ts(schema.encode_heartbeat(42, "x")) == 42
    for bad in (b"nope", b"{}", b'[{"id":"A"}]'):
        with pytest.raises(MessageError):
            schema.decode_instruments(bad)
    with pytest.raises(MessageError):
        schema.heartbeat_ts(b'{"ts":"soon"}')


def test_cluster_names_put_each_instrument_on_one_slot_and_the_lease_on_its_own() -> None:
    keys = schema.Keys(cluster=True)
    assert keys.book("BTC-USD") == "md:book:{BTC-USD}"
    assert keys.trades("BTC-USD") == "md:trades:{BTC-USD}" and keys.deltas("BTC-USD") == "md:delta:{BTC-USD}"
    assert len({key_slot(name) for name in (keys.book("BTC-USD"), keys.trades("BTC-USD"), keys.deltas("BTC-USD"))}) == 1
    assert (keys.leader, keys.leader_token, keys.heartbeat) == ("md:{leader}", "md:{leader}:token", "md:{leader}:heartbeat")
    assert len({key_slot(keys.leader), key_slot(keys.leader_token), key_slot(keys.heartbeat)}) == 1
    assert keys.instruments == "md:instruments"
    assert key_slot(keys.fence(7386)) == 7386 and keys.fence(7386).startswith("md:fence:{")
    assert keys.instrument_of(b"md:book:{ETH-USD}") == "ETH-USD"
    assert schema.Keys().book("BTC-USD") == "md:book:BTC-USD"  # single-server names unchanged
