"""Whether a message read from Redis proves itself, before the bridge forwards it: pure, once per message.

A book proves itself when it decodes as a book message (else `malformed`), names the
instrument of the channel it came on (else `channel`), and its `checksum` matches its
own levels, converted back to ticks and lots with the instrument's tick and lot sizes
(else `checksum`). Its place in the order, (epoch, seq), depends on what came before
and is bridge.fanout's judgement (`order`). A trade proves itself when it decodes and
names its channel's instrument. Nothing here touches a socket, Redis or a clock, and
nothing is decoded per socket: the fanout calls these once per message.
"""

from __future__ import annotations

from typing import Any

from marketdata import schema
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


def verify_book(payload: bytes, instrument: str, inst: Instrument | None) -> Place:
    """The (epoch, seq) of a book read on the channel of `instrument`, whose reference data is `inst`.

    Raises Rejected (MALFORMED, CHANNEL or CHECKSUM) when the book does not prove itself;
    `inst` None (the instrument is no longer listed) is a CHANNEL rejection.
    """
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
    return msg["epoch"], msg["seq"]


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
