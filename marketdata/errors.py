"""The errors the market-data core raises.

The whole tree::

    MarketDataError
    ├── UnknownInstrument      an instrument id nobody lists
    ├── BookError              a book cannot take an event
    │   ├── SequenceGap        an event's seq is not the one expected
    │   ├── EpochMismatch      an incremental event of another epoch than its book's
    │   └── ChecksumMismatch   the rebuilt book differs from the exchange's
    ├── MessageError           a bus message that is not a valid snapshot or trade
    └── StreamEnded            the simulator closed its stream (it does so when it stops)

The core raises them; the edges turn them into gRPC statuses, WebSocket close
codes, HTTP statuses or a one-line CLI message.
"""

from __future__ import annotations


class MarketDataError(Exception):
    """Root of every error this package raises on purpose."""


class UnknownInstrument(MarketDataError, LookupError):
    def __init__(self, instrument: str) -> None:
        super().__init__(f"unknown instrument {instrument!r}")
        self.instrument = instrument


class BookError(MarketDataError):
    """A book cannot take an event; it must be replaced by a fresh snapshot."""


class SequenceGap(BookError):
    def __init__(self, instrument: str, expected: int, got: int) -> None:
        super().__init__(f"{instrument}: sequence gap, expected seq {expected}, got {got}")
        self.instrument = instrument
        self.expected = expected
        self.got = got


class EpochMismatch(BookError):
    def __init__(self, instrument: str, expected: int, got: int) -> None:
        super().__init__(f"{instrument}: event of epoch {got} on a book of epoch {expected}; that epoch's snapshot is missing")
        self.instrument = instrument
        self.expected = expected
        self.got = got


class ChecksumMismatch(BookError):
    def __init__(self, instrument: str, seq: int, expected: int, got: int) -> None:
        super().__init__(
            f"{instrument}: checksum mismatch at seq {seq}, exchange has {expected}, rebuilt book has {got}"
        )
        self.instrument = instrument
        self.seq = seq
        self.expected = expected
        self.got = got


class MessageError(MarketDataError, ValueError):
    """A message on the bus that is not a valid snapshot or trade."""


class StreamEnded(MarketDataError):
    """The simulator closed the stream, as it does when it shuts down; a consumer reconnects or stops."""
