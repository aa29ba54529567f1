"""The Redis contract: key and channel names, and the JSON of every message.

This module is the only place that encodes or decodes bus messages; the ingestor
writes with it, the bridge, the load generator and the tests read with it. The
README documents each field. Messages are compact JSON made by orjson, prices and
sizes rounded to the instrument's decimals, times integer microseconds.

Book and trade messages carry `epoch` beside `seq` (the simulator's run, see the
proto's Event.epoch): their order is (epoch, seq). The field was added within
version 1, since a reader that ignores unknown fields loses nothing; a message
written before it existed reads as epoch 0.

A delta message (`"type":"delta"`, on its own channel) turns the book published at
`prev_seq` into the one published at `seq` (marketdata.delta computes and applies it);
it was added within version 1 as well: it goes where only readers that ask for it look.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson

from marketdata.book import BID, CHECKSUM_DEPTH, Level, OrderBook, checksum
from marketdata.errors import MessageError
from marketdata.instruments import Instrument
from marketdata.slots import slot_tag

VERSION = 1
DEFAULT_PREFIX = "md"
DEFAULT_DEPTH = 25
MIN_DEPTH = 10  # the checksum covers 10 levels a side; a reader needs them to verify
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis name the system uses, under one configurable prefix.

    With `cluster` (Redis Cluster), each instrument's channels and keys carry its id
    as a hash tag (`md:book:{BTC-USD}`), so that they share one slot and one script
    can write them all; the lease, its token and the heartbeat share the `{leader}`
    slot for the same reason; the instrument list keeps its name (a slot of its own);
    each slot the ingestor writes has a fence key (`fence`). Without it the names are
    the single-server ones, unchanged (`md:book:BTC-USD`).
    """

    prefix: str = DEFAULT_PREFIX
    cluster: bool = False

    def _instrument(self, kind: str, instrument: str) -> str:
        return f"{self.prefix}:{kind}:{{{instrument}}}" if self.cluster else f"{self.prefix}:{kind}:{instrument}"

    def book(self, instrument: str) -> str:
        """Channel carrying every snapshot, and key holding the latest one."""
        return self._instrument("book", instrument)

    def trades(self, instrument: str) -> str:
        """Channel carrying every trade, and key of a list of the recent ones (newest first)."""
        return self._instrument("trades", instrument)

    def deltas(self, instrument: str) -> str:
        """Channel carrying the delta from each published book to the next (no key: deltas have no last value)."""
        return self._instrument("delta", instrument)

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
        return f"{self.prefix}:{{leader}}:heartbeat" if self.cluster else f"{self.prefix}:heartbeat"

    @property
    def leader(self) -> str:
        """Key of the publishing lease: `TOKEN HOLDER` of the ingestor that publishes, with a TTL."""
        return f"{self.prefix}:{{leader}}" if self.cluster else f"{self.prefix}:leader"

    @property
    def leader_token(self) -> str:
        """Counter of lease acquisitions: the fencing token, which only grows."""
        return f"{self.prefix}:{{leader}}:token" if self.cluster else f"{self.prefix}:leader:token"

    def fence(self, slot: int) -> str:
        """Redis Cluster: the fence key of a slot, `TOKEN HOLDER` of the newest lease that wrote there."""
        return f"{self.prefix}:fence:{{{slot_tag(slot)}}}"

    def instrument_of(self, channel: bytes | str) -> str:
        """The instrument id of a book or trades channel name."""
        name = channel.decode() if isinstance(channel, bytes) else channel
        return name.rsplit(":", 1)[-1].removeprefix("{").removesuffix("}")


def encode_book(inst: Instrument, book: OrderBook, depth: int, ts: int, pts: int, checksum: int) -> bytes:
    """One book snapshot message: the best `depth` levels a side, decimals at the edge."""
    return encode_snapshot(inst, book.epoch, book.seq, book.bids(depth), book.asks(depth), ts, pts, checksum)


def encode_snapshot(inst: Instrument, epoch: int, seq: int, bids: Iterable[Level], asks: Iterable[Level],
                    ts: int, pts: int, checksum: int) -> bytes:
    """A book snapshot message from its levels (best first, ticks and lots), as encode_book writes it."""
    price, size = inst.price, inst.size
    return orjson.dumps(
        {
            "v": VERSION,
            "type": "book",
            "instrument": inst.id,
            "seq": seq,
            "ts": ts,
            "pts": pts,
            "epoch": epoch,
            "bids": [[price(p), size(s)] for p, s in bids],
            "asks": [[price(p), size(s)] for p, s in asks],
            "checksum": checksum,
        }
    )


def encode_delta(inst: Instrument, epoch: int, seq: int, prev_seq: int, bids: Iterable[Level], asks: Iterable[Level],
                 ts: int, pts: int, checksum: int) -> bytes:
    """One delta message: the changed levels (size 0: gone) from the book published at `prev_seq` to the one at `seq`.

    `checksum` is that of the book at `seq`; the README documents each field.
    """
    price, size = inst.price, inst.size
    return orjson.dumps(
        {
            "v": VERSION,
            "type": "delta",
            "instrument": inst.id,
            "epoch": epoch,
            "seq": seq,
            "prev_seq": prev_seq,
            "ts": ts,
            "pts": pts,
            "bids": [[price(p), size(s)] for p, s in bids],
            "asks": [[price(p), size(s)] for p, s in asks],
            "checksum": checksum,
        }
    )


def encode_trade(inst: Instrument, seq: int, ts: int, price: int, size: int, aggressor: int, epoch: int = 0) -> bytes:
    """One trade message at (epoch, seq); `side` is the side that took liquidity ("buy" or "sell")."""
    return orjson.dumps(
        {
            "v": VERSION,
            "type": "trade",
            "instrument": inst.id,
            "seq": seq,
            "ts": ts,
            "epoch": epoch,
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


def _load(payload: bytes | str, what: str, shape: type[list[Any] | dict[str, Any]]) -> Any:
    """`payload` parsed, if it is JSON of `shape` (list or dict); else MessageError naming `what`."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MessageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, shape):
        raise MessageError(f"{what} is not a JSON {'array' if shape is list else 'object'}")
    return value


def decode_instruments(payload: bytes | str) -> tuple[Instrument, ...]:
    """The instrument list as encode_instruments wrote it; raise MessageError naming what is wrong."""
    items = _load(payload, "instrument list", list)
    try:
        return tuple(Instrument(**{k: item[k] for k in _INSTRUMENT_FIELDS}) for item in items)
    except (TypeError, KeyError, ValueError, ArithmeticError) as exc:
        raise MessageError(f"bad instrument in the list: {exc!r}") from None


_INSTRUMENT_FIELDS = ("id", "kind", "description", "tick_size", "lot_size", "price_decimals", "size_decimals")


def heartbeat_ts(payload: bytes | str) -> int:
    """The `ts` (µs since the epoch) of a heartbeat value; raise MessageError if it has none."""
    ts = _load(payload, "heartbeat", dict).get("ts")
    if not isinstance(ts, int):
        raise MessageError("heartbeat has no integer ts")
    return ts


_BOOK_FIELDS = ("instrument", "seq", "ts", "pts", "bids", "asks", "checksum")
_TRADE_FIELDS = ("instrument", "seq", "ts", "price", "size", "side")
_DELTA_FIELDS = ("instrument", "seq", "prev_seq", "ts", "pts", "bids", "asks", "checksum")
_FIELDS = {"book": _BOOK_FIELDS, "trade": _TRADE_FIELDS, "delta": _DELTA_FIELDS}


def decode(payload: bytes | str) -> dict[str, Any]:
    """Parse and check one book, trade or delta message; raise MessageError naming what is wrong.

    The result always has `epoch` (0 for a message written before epochs existed).
    """
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    msg = _load(payload, "message", dict)
    if msg.get("v") != VERSION:
        raise MessageError(f"unsupported schema version {msg.get('v')!r}")
    kind = msg.get("type")
    fields = _FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise MessageError(f"unknown message type {kind!r}")
    missing = [f for f in fields if f not in msg]
    if missing:
        raise MessageError(f"{kind} message lacks {', '.join(missing)}")
    if not isinstance(msg["seq"], int) or not isinstance(msg["instrument"], str):
        raise MessageError("seq must be an integer and instrument a string")
    if kind == "delta" and (not isinstance(msg["prev_seq"], int) or msg["prev_seq"] >= msg["seq"]):
        raise MessageError("prev_seq must be an integer below seq")
    epoch = msg.setdefault("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise MessageError(f"epoch must be a non-negative integer, not {epoch!r}")
    return msg


def book_checksum(msg: dict[str, Any], inst: Instrument) -> int:
    """The book checksum of a decoded book message's own levels (marketdata.book.checksum).

    The JSON decimals go back to integer ticks and lots as the README's "Book checksum"
    says (`round(price * 10**price_decimals / tick_units)`, likewise lots), which is
    exact for every value the encoder writes. Compare the result with `msg["checksum"]`.
    Raises MessageError when a side is not a list of `[price, size]` number pairs.
    """
    try:
        return checksum(_units(msg["bids"], inst), _units(msg["asks"], inst))
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise MessageError(f"bad book levels: {exc}") from None


def _units(levels: list[Any], inst: Instrument) -> list[Level]:
    """The best CHECKSUM_DEPTH levels of one side in ticks and lots."""
    return units(levels, inst, CHECKSUM_DEPTH)


def units(levels: list[Any], inst: Instrument, n: int | None = None) -> list[Level]:
    """The first `n` (all when None) `[price, size]` pairs of a decoded side in ticks and lots, exactly.

    Raises TypeError or ValueError when `levels` is not a list of number pairs.
    """
    if not isinstance(levels, list):
        raise TypeError("a side is not an array")
    ps, tu, ss, lu = inst.price_scale, inst.tick_units, inst.size_scale, inst.lot_units
    return [(round(p * ps / tu), round(s * ss / lu)) for p, s in (levels if n is None else islice(levels, n))]


# The encoders write seq, then the times, then epoch, all within the first bytes.
_SEQ = b'"seq":'
_EPOCH = b',"epoch":'
_HEAD = b'{"v":1,'
_PEEK = 256


def _peek_int(payload: bytes, key: bytes, name: str) -> int | None:
    """The digits right after `key` in the head of `payload`, None when `key` is not there."""
    if not payload.startswith(_HEAD):
        raise MessageError("not a version 1 message")
    i = payload.find(key, 0, _PEEK)
    if i < 0:
        return None
    i += len(key)
    j = i
    n = len(payload)
    while j < n and 48 <= payload[j] <= 57:
        j += 1
    if j == i:
        raise MessageError(f"{name} is not an integer")
    return int(payload[i:j])


def peek_seq(payload: bytes) -> int:
    """The `seq` of an encoded message without parsing it (the bridge's hot path).

    Raises MessageError when the payload has no integer seq where the encoder puts it.
    """
    seq = _peek_int(payload, _SEQ, "seq")
    if seq is None:
        raise MessageError("no seq field")
    return seq


def peek_epoch(payload: bytes) -> int:
    """The `epoch` of an encoded message without parsing it; 0 for one written before epochs."""
    return _peek_int(payload, _EPOCH, "epoch") or 0


def peek_order(payload: bytes) -> tuple[int, int]:
    """The `(epoch, seq)` of an encoded message without parsing it: its place in its instrument's order.

    Raises MessageError like peek_seq; a message written before epochs is of epoch 0.
    """
    seq = peek_seq(payload)
    return _peek_int(payload, _EPOCH, "epoch") or 0, seq
