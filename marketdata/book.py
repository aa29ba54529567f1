"""The order book: integer ticks and lots, best-first views, and the book checksum.

Pure code: no I/O, no clock. The simulator, the CLI client and the ingestor all
use this one implementation, so a rebuilt book is exactly the exchange's.

Levels live in a dict (price ticks -> size lots) per side, which makes a size
change one dict store. A sorted list of each side's prices (ascending: the best
ask first, the best bid last) changes only when a level appears or disappears
(bisect insert or delete), so a top-N read is a slice plus N lookups, never a sort.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

from marketdata.errors import SequenceGap

# The same numbers as marketdata.v1.Side, so protobuf values pass through as they are.
BID = 1
ASK = 2

CHECKSUM_DEPTH = 10

Level = tuple[int, int]


def checksum(bids: Iterable[Level], asks: Iterable[Level]) -> int:
    """CRC32 of the best 10 asks then the best 10 bids, as docs/architecture.md defines it.

    Each side is best-first `ticks:lots` joined by ",", the sides joined by "|".
    """
    a = ",".join([f"{p}:{s}" for p, s in islice(asks, CHECKSUM_DEPTH)])
    b = ",".join([f"{p}:{s}" for p, s in islice(bids, CHECKSUM_DEPTH)])
    return zlib.crc32(f"{a}|{b}".encode("ascii"))


@dataclass(frozen=True, slots=True)
class Top:
    """Best bid and ask in ticks and lots; None where a side is empty."""

    bid: Level | None
    ask: Level | None

    @property
    def spread(self) -> int | None:
        if self.bid is None or self.ask is None:
            return None
        return self.ask[0] - self.bid[0]

    @property
    def mid2(self) -> int | None:
        """Twice the mid price in ticks (an integer, so no half-tick rounding)."""
        if self.bid is None or self.ask is None:
            return None
        return self.ask[0] + self.bid[0]


class OrderBook:
    """One instrument's book at a place in the exchange's order: (epoch, seq).

    `epoch` names the exchange's run whose seq numbering the book follows (see the
    proto's Event.epoch); 0 until a snapshot says otherwise. The checksum leaves it out.
    """

    __slots__ = ("instrument", "seq", "epoch", "_bids", "_asks", "_bid_keys", "_ask_keys")

    def __init__(self, instrument: str, seq: int = 0, epoch: int = 0) -> None:
        self.instrument = instrument
        self.seq = seq
        self.epoch = epoch
        self._bids: dict[int, int] = {}
        self._asks: dict[int, int] = {}
        # Prices ascending on both sides, so a read has no negation to undo:
        # the best bid is the last key, the best ask the first.
        self._bid_keys: list[int] = []
        self._ask_keys: list[int] = []

    # -- writing ---------------------------------------------------------

    def reset(self, seq: int, bids: Iterable[Level] = (), asks: Iterable[Level] = (), epoch: int | None = None) -> None:
        """Replace the whole book (a snapshot at `seq`, of `epoch` if given); levels of size 0 are skipped."""
        self.seq = seq
        if epoch is not None:
            self.epoch = epoch
        self._bids = {p: s for p, s in bids if s}
        self._asks = {p: s for p, s in asks if s}
        self._bid_keys = sorted(self._bids)
        self._ask_keys = sorted(self._asks)

    def advance(self, seq: int) -> None:
        """Move to `seq`, which must follow the current one; raise SequenceGap if not."""
        if seq != self.seq + 1:
            raise SequenceGap(self.instrument, self.seq + 1, seq)
        self.seq = seq

    def apply(self, changes: Iterable[tuple[int, int, int]]) -> None:
        """Apply absolute level changes `(side, price, size)` in order; size 0 removes a level.

        The same as calling `set` for each change, without a call per change (the hot path).
        """
        bids, asks = self._bids, self._asks
        bid_keys, ask_keys = self._bid_keys, self._ask_keys
        for side, price, size in changes:
            if side == BID:
                if size:
                    if price not in bids:
                        insort(bid_keys, price)
                    bids[price] = size
                elif bids.pop(price, None) is not None:
                    del bid_keys[bisect_left(bid_keys, price)]
            elif side == ASK:
                if size:
                    if price not in asks:
                        insort(ask_keys, price)
                    asks[price] = size
                elif asks.pop(price, None) is not None:
                    del ask_keys[bisect_left(ask_keys, price)]
            else:
                raise ValueError(f"{self.instrument}: bad side {side!r}")

    def set_bid(self, price: int, size: int) -> None:
        levels = self._bids
        if size:
            if price not in levels:
                insort(self._bid_keys, price)
            levels[price] = size
        elif levels.pop(price, None) is not None:
            keys = self._bid_keys
            del keys[bisect_left(keys, price)]

    def set_ask(self, price: int, size: int) -> None:
        levels = self._asks
        if size:
            if price not in levels:
                insort(self._ask_keys, price)
            levels[price] = size
        elif levels.pop(price, None) is not None:
            keys = self._ask_keys
            del keys[bisect_left(keys, price)]

    def set(self, side: int, price: int, size: int) -> None:
        """Set the level at `price` on `side` (BID or ASK) to `size` lots; 0 removes it."""
        if side == BID:
            self.set_bid(price, size)
        elif side == ASK:
            self.set_ask(price, size)
        else:
            raise ValueError(f"{self.instrument}: bad side {side!r}")

    # -- reading ---------------------------------------------------------

    def bids(self, n: int | None = None) -> list[Level]:
        """The best `n` bids (all when None), best first."""
        levels, keys = self._bids, self._bid_keys
        if n is None:
            return [(p, levels[p]) for p in reversed(keys)]
        if n <= 0:
            return []
        return [(p, levels[p]) for p in keys[-1 : -n - 1 : -1]]  # the last n keys, best first

    def asks(self, n: int | None = None) -> list[Level]:
        """The best `n` asks (all when None), best first."""
        levels, keys = self._asks, self._ask_keys
        if n is None:
            return [(p, levels[p]) for p in keys]
        if n <= 0:
            return []
        return [(p, levels[p]) for p in keys[:n]]

    def size_at(self, side: int, price: int) -> int:
        return (self._bids if side == BID else self._asks).get(price, 0)

    def level_at(self, side: int, index: int) -> Level:
        """The level at `index` of one side, best-first (-1: the worst); IndexError if absent."""
        if side == BID:
            p = self._bid_keys[-1 - index]
            return (p, self._bids[p])
        p = self._ask_keys[index]
        return (p, self._asks[p])

    def depth(self, side: int) -> int:
        """How many levels one side holds."""
        return len(self._bids if side == BID else self._asks)

    @property
    def best_bid(self) -> Level | None:
        if not self._bid_keys:
            return None
        p = self._bid_keys[-1]
        return (p, self._bids[p])

    @property
    def best_ask(self) -> Level | None:
        if not self._ask_keys:
            return None
        p = self._ask_keys[0]
        return (p, self._asks[p])

    def top(self) -> Top:
        return Top(self.best_bid, self.best_ask)

    def is_crossed(self) -> bool:
        """True when the best bid is at or above the best ask (crossed or locked)."""
        return bool(self._bid_keys and self._ask_keys) and self._bid_keys[-1] >= self._ask_keys[0]

    def checksum(self) -> int:
        """The book checksum (see `checksum`), made straight from the sorted keys."""
        asks, bids = self._asks, self._bids
        a = ",".join([f"{p}:{asks[p]}" for p in self._ask_keys[:CHECKSUM_DEPTH]])
        b = ",".join([f"{p}:{bids[p]}" for p in self._bid_keys[-1 : -CHECKSUM_DEPTH - 1 : -1]])
        return zlib.crc32(f"{a}|{b}".encode("ascii"))

    def __repr__(self) -> str:
        return f"OrderBook({self.instrument!r}, epoch={self.epoch}, seq={self.seq}, bids={len(self._bids)}, asks={len(self._asks)})"
