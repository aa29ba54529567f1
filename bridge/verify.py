"""Whether a message read from Redis proves itself, before the bridge forwards it: pure, once per message.

A book proves itself when it decodes as a book message (else `malformed`), names the
instrument of the channel it came on (else `channel`), and its `checksum` matches its
own levels, converted back to ticks and lots with the instrument's tick and lot sizes
(else `checksum`). Its place in the order, (epoch, seq), depends on what came before
and is bridge.fanout's judgement (`order`). A trade proves itself when it decodes and
names its channel's instrument. A delta proves itself when it decodes, names its
channel's instrument, and, applied to the book it starts from (the one the bridge
forwarded last, whose levels `checked_book` kept), gives its `checksum`. Nothing here
touches a socket, Redis or a clock, and nothing is decoded per socket: the fanout calls
these once per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marketdata import delta, schema
from marketdata.errors import MessageError
from marketdata.instruments import Instrument

CHANNEL = "channel"
ORDER = "order"
CHECKSUM = "checksum"
MALFORMED = "malformed"
REASONS = (CHANNEL, ORDER, CHECKSUM, MALFORMED)  # the `reason` label of bridge_books_rejected_total

Place = tuple[int, int]  # (epoch, seq): where a message stands in its instrument's order


class Rejected(MessageError):
    """A message that does not prove itself; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Book:
    """A book that proved itself: its place and its levels as decoded (JSON numbers, best first)."""

    epoch: int
    seq: int
    bids: list[Any]
    asks: list[Any]


@dataclass(frozen=True, slots=True)
class Delta:
    """A delta as decoded, its channel checked; whether it applies is `apply_delta`'s question."""

    epoch: int
    seq: int
    prev_seq: int
    bids: list[Any]
    asks: list[Any]
    checksum: int


def verify_book(payload: bytes, instrument: str, inst: Instrument | None) -> Place:
    """The (epoch, seq) of a book read on the channel of `instrument`, whose reference data is `inst`.

    Raises Rejected (MALFORMED, CHANNEL or CHECKSUM) when the book does not prove itself;
    `inst` None (the instrument is no longer listed) is a CHANNEL rejection.
    """
    book = checked_book(payload, instrument, inst)
    return book.epoch, book.seq


def checked_book(payload: bytes, instrument: str, inst: Instrument | None) -> Book:
    """verify_book, keeping the levels: the base a delta applies to."""
    msg = _decode(payload)
    if msg["type"] != "book" or msg["instrument"] != instrument:
        raise Rejected(CHANNEL, f"a {msg['type']} of {msg['instrument']!r} on the book channel of {instrument!r}")
    if inst is None:
        raise Rejected(CHANNEL, f"{instrument!r} is not in the instrument list")
    try:
        ours = schema.book_checksum(msg, inst)
    except MessageError as exc:
        raise Rejected(MALFORMED, str(exc)) from None
    if ours != msg["checksum"]:
        raise Rejected(CHECKSUM, f"seq {msg['seq']} says {msg['checksum']!r}, its levels give {ours}")
    return Book(msg["epoch"], msg["seq"], msg["bids"], msg["asks"])


def checked_delta(payload: bytes, instrument: str) -> Delta:
    """A delta read on the delta channel of `instrument`; Rejected (MALFORMED or CHANNEL) if it is not one."""
    msg = _decode(payload)
    if msg["type"] != "delta" or msg["instrument"] != instrument:
        raise Rejected(CHANNEL, f"a {msg['type']} of {msg['instrument']!r} on the delta channel of {instrument!r}")
    bids, asks = msg["bids"], msg["asks"]
    if not isinstance(bids, list) or not isinstance(asks, list):
        raise Rejected(MALFORMED, "a side of the delta is not an array")
    return Delta(msg["epoch"], msg["seq"], msg["prev_seq"], bids, asks, msg["checksum"])


def verify_delta(payload: bytes, instrument: str, inst: Instrument | None, base: Book | None) -> Delta | None:
    """The delta read on the delta channel of `instrument`, if it proves itself on top of `base`.

    None when it does not start at `base` (none, another epoch, or `prev_seq` not its
    seq); Rejected as checked_delta and apply_delta say, or CHANNEL when `inst` is None.
    """
    d = checked_delta(payload, instrument)
    if base is None or d.epoch != base.epoch or d.prev_seq != base.seq:
        return None
    if inst is None:
        raise Rejected(CHANNEL, f"{instrument!r} is not in the instrument list")
    apply_delta(base, d, inst)
    return d


def apply_delta(base: Book, d: Delta, inst: Instrument) -> Book:
    """The book `d` makes of `base` (at d.prev_seq, the caller checked); Rejected (CHECKSUM, MALFORMED) unless it gives d's checksum."""
    try:
        bids = delta.apply(base.bids, d.bids, True)
        asks = delta.apply(base.asks, d.asks, False)
        ours = schema.book_checksum({"bids": bids, "asks": asks}, inst)
    except (TypeError, ValueError, MessageError) as exc:
        raise Rejected(MALFORMED, f"bad delta levels: {exc}") from None
    if ours != d.checksum:
        raise Rejected(CHECKSUM, f"delta to seq {d.seq} says {d.checksum!r}, applied it gives {ours}")
    return Book(d.epoch, d.seq, bids, asks)


def verify_trade(payload: bytes, instrument: str) -> Place:
    """The (epoch, seq) of a trade read on the trades channel of `instrument`; raise Rejected if it is not one."""
    msg = _decode(payload)
    if msg["type"] != "trade" or msg["instrument"] != instrument:
        raise Rejected(CHANNEL, f"a {msg['type']} of {msg['instrument']!r} on the trades channel of {instrument!r}")
    return msg["epoch"], msg["seq"]


def _decode(payload: bytes) -> dict[str, Any]:
    try:
        return schema.decode(payload)
    except MessageError as exc:
        raise Rejected(MALFORMED, str(exc)) from None
