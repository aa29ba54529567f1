"""The Redis message schema: exact decimals at the edge, strict decoding, peek_seq."""

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

BTC, EUR, ES = select(["BTC-USD", "EUR-USD", "ES-DEC26"])


def book_of(inst: Instrument, seq: int, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> OrderBook:
    book = OrderBook(inst.id)
    book.reset(seq, bids, asks)
    return book


def test_encode_book_fields_and_decimals() -> None:
    # EUR-USD: tick 0.00001 (5 decimals), lot 1000
    book = book_of(EUR, 42, bids=[(108499, 3), (108498, 1)], asks=[(108501, 2)])
    payload = schema.encode_book(EUR, book, 25, ts=1_764_050_000_123_456, pts=1_764_050_000_123_789, checksum=book.checksum())
    assert payload.startswith(b'{"v":1,"type":"book","instrument":"EUR-USD","seq":42,')
    assert b'"bids":[[1.08499,3000.0],[1.08498,1000.0]]' in payload
    assert b'"asks":[[1.08501,2000.0]]' in payload
    msg = orjson.loads(payload)
    assert list(msg) == ["v", "type", "instrument", "seq", "ts", "pts", "bids", "asks", "checksum"]
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
    buy = orjson.loads(schema.encode_trade(BTC, 9, 123, price=650001, size=2500, aggressor=BID))
    assert buy == {"v": 1, "type": "trade", "instrument": "BTC-USD", "seq": 9, "ts": 123, "price": 65000.1, "size": 0.25, "side": "buy"}
    sell = orjson.loads(schema.encode_trade(EUR, 10, 124, price=108500, size=1, aggressor=ASK))
    assert (sell["price"], sell["size"], sell["side"]) == (1.085, 1000.0, "sell")


def test_round_trip_through_decode() -> None:
    book = book_of(BTC, 5, bids=[(649999, 5312), (649998, 1)], asks=[(650000, 2500)])
    payload = schema.encode_book(BTC, book, 25, 11, 12, book.checksum())
    msg = schema.decode(payload)
    assert msg["type"] == "book" and msg["instrument"] == "BTC-USD" and msg["seq"] == 5
    # back to integers by the README's rule, the checksum is the book's
    ticks = [(BTC.ticks(str(p)), round(s * BTC.size_scale / BTC.lot_units)) for p, s in msg["bids"]]
    assert ticks == book.bids()
    assert schema.decode(payload.decode()) == msg  # str payloads too
    trade = schema.decode(schema.encode_trade(BTC, 6, 13, 650000, 1, ASK))
    assert (trade["type"], trade["seq"], trade["side"]) == ("trade", 6, "sell")


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


@pytest.mark.parametrize(
    "payload",
    [b"", b"garbage", b'{"v":2,"seq":1}', b'{"v":1,"type":"book"}', b'{"v":1,"seq":"7"}', b'{"v":1,"seq":-1}', b'{"v":1,"seq":'],
)
def test_peek_seq_on_garbage(payload: bytes) -> None:
    with pytest.raises(MessageError):
        schema.peek_seq(payload)


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
