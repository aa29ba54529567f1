"""The Redis contract: key and channel names, and the JSON of every message.

This module is the only place that encodes or decodes bus messages; the ingestor
writes with it, the bridge, the load generator and the tests read with it. The
README documents each field. Messages are compact JSON made by orjson, prices and
sizes rounded to the instrument's decimals, times integer microseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from marketdata.book import BID, OrderBook
from marketdata.errors import MessageError
from marketdata.instruments import Instrument

VERSION = 1
DEFAULT_PREFIX = "md"
DEFAULT_DEPTH = 25
MIN_DEPTH = 10  # the checksum covers 10 levels a side; a reader needs them to verify
TRADES_HISTORY = 50
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis name the system uses, under one configurable prefix."""

    prefix: str = DEFAULT_PREFIX

    def book(self, instrument: str) -> str:
        """Channel carrying every snapshot, and key holding the latest one."""
        return f"{self.prefix}:book:{instrument}"

    def trades(self, instrument: str) -> str:
        """Channel carrying every trade, and key of a list of the recent ones (newest first)."""
        return f"{self.prefix}:trades:{instrument}"

    @property
    def book_pattern(self) -> str:
        return f"{self.prefix}:book:*"

    @property
    def instruments(self) -> str:
        """Key holding the instrument list (JSON array)."""
        return f"{self.prefix}:instruments"

    @property
    def heartbeat(self) -> str:
        """Key the ingestor refreshes with a TTL while its feed is live."""
        return f"{self.prefix}:heartbeat"

    def instrument_of(self, channel: bytes | str) -> str:
        """The instrument id of a book or trades channel name."""
        name = channel.decode() if isinstance(channel, bytes) else channel
        return name.rsplit(":", 1)[-1]


def encode_book(inst: Instrument, book: OrderBook, depth: int, ts: int, pts: int, checksum: int) -> bytes:
    """One book snapshot message: the best `depth` levels a side, decimals at the edge."""
    price, size = inst.price, inst.size
    return orjson.dumps(
        {
            "v": VERSION,
            "type": "book",
            "instrument": inst.id,
            "seq": book.seq,
            "ts": ts,
            "pts": pts,
            "bids": [[price(p), size(s)] for p, s in book.bids(depth)],
            "asks": [[price(p), size(s)] for p, s in book.asks(depth)],
            "checksum": checksum,
        }
    )


def encode_trade(inst: Instrument, seq: int, ts: int, price: int, size: int, aggressor: int) -> bytes:
    """One trade message; `side` is the side that took liquidity ("buy" or "sell")."""
    return orjson.dumps(
        {
            "v": VERSION,
            "type": "trade",
            "instrument": inst.id,
            "seq": seq,
            "ts": ts,
            "price": inst.price(price),
            "size": inst.size(size),
            "side": "buy" if aggressor == BID else "sell",
        }
    )


def encode_instruments(instruments: Iterable[Instrument]) -> bytes:
    return orjson.dumps([instrument_json(i) for i in instruments])


def instrument_json(inst: Instrument) -> dict[str, Any]:
    return {
        "id": inst.id,
        "kind": inst.kind,
        "description": inst.description,
        "tick_size": inst.tick_size,
        "lot_size": inst.lot_size,
        "price_decimals": inst.price_decimals,
        "size_decimals": inst.size_decimals,
    }


def encode_heartbeat(ts: int, source: str) -> bytes:
    return orjson.dumps({"v": VERSION, "ts": ts, "source": source})


def decode_instruments(payload: bytes | str) -> tuple[Instrument, ...]:
    """The instrument list as encode_instruments wrote it; raise MessageError naming what is wrong."""
    try:
        items = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"instrument list is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise MessageError("instrument list is not a JSON array")
    try:
        return tuple(Instrument(**{k: item[k] for k in _INSTRUMENT_FIELDS}) for item in items)
    except (TypeError, KeyError, ValueError, ArithmeticError) as exc:
        raise MessageError(f"bad instrument in the list: {exc!r}") from None


_INSTRUMENT_FIELDS = ("id", "kind", "description", "tick_size", "lot_size", "price_decimals", "size_decimals")


def heartbeat_ts(payload: bytes | str) -> int:
    """The `ts` (µs since the epoch) of a heartbeat value; raise MessageError if it has none."""
    try:
        ts = orjson.loads(payload).get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        raise MessageError("heartbeat is not a JSON object") from None
    if not isinstance(ts, int):
        raise MessageError("heartbeat has no integer ts")
    return ts


_BOOK_FIELDS = ("instrument", "seq", "ts", "pts", "bids", "asks", "checksum")
_TRADE_FIELDS = ("instrument", "seq", "ts", "price", "size", "side")


def decode(payload: bytes | str) -> dict[str, Any]:
    """Parse and check one bus message; raise MessageError naming what is wrong."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise MessageError("not a JSON object")
    if msg.get("v") != VERSION:
        raise MessageError(f"unsupported schema version {msg.get('v')!r}")
    kind = msg.get("type")
    fields = _BOOK_FIELDS if kind == "book" else _TRADE_FIELDS if kind == "trade" else None
    if fields is None:
        raise MessageError(f"unknown message type {kind!r}")
    missing = [f for f in fields if f not in msg]
    if missing:
        raise MessageError(f"{kind} message lacks {', '.join(missing)}")
    if not isinstance(msg["seq"], int) or not isinstance(msg["instrument"], str):
        raise MessageError("seq must be an integer and instrument a string")
    return msg


_SEQ = b'"seq":'
_HEAD = b'{"v":1,'


def peek_seq(payload: bytes) -> int:
    """The `seq` of an encoded message without parsing it (the bridge's hot path).

    Raises MessageError when the payload has no integer seq where the encoder puts it.
    """
    if not payload.startswith(_HEAD):
        raise MessageError("not a version 1 message")
    i = payload.find(_SEQ, 0, 256)
    if i < 0:
        raise MessageError("no seq field")
    i += len(_SEQ)
    j = i
    n = len(payload)
    while j < n and 48 <= payload[j] <= 57:
        j += 1
    if j == i:
        raise MessageError("seq is not an integer")
    return int(payload[i:j])
