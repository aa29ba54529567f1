"""Book deltas: what changed between two published books, and a reader's book kept up to date by them.

Pure code, no I/O. A delta side lists, best first, the levels whose size changed or
that entered the published depth, and with size 0 the levels that left it (deleted,
or pushed below the depth): applied to the previous published book it gives exactly
the next one, with nothing to truncate. The ingestor computes them (`diff`, on integer
ticks and lots); readers apply them (`apply`). Both walk two best-first sides at once,
so neither sorts. They work on any numbers: the bridge applies deltas to the JSON
numbers it decoded, where one price always decodes to the same float.

`Replica` is one reader's copy of an instrument's book in integer units, fed with
decoded snapshot and delta messages and verified after each (the load generator keeps
one per socket, as the dashboard does in web/static/delta.js). A gap or a checksum
that does not match makes it wait for a snapshot; the reader then asks the bridge for
one (`{"op":"resync"}`, see the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from marketdata import schema
from marketdata.book import checksum
from marketdata.errors import MessageError
from marketdata.instruments import Instrument

# What a Replica makes of a message.
TAKEN = "taken"  # a snapshot replaced the book
APPLIED = "applied"  # a delta moved the book on, and the result matches its checksum
STALE = "stale"  # not after the book held: dropped
WAITING = "waiting"  # a delta while the book waits for a snapshot: dropped
GAP = "gap"  # a delta that does not start at the book held: the book now waits for a snapshot
MISMATCH = "mismatch"  # the levels do not give the message's checksum: the book now waits for a snapshot


def diff(old: Sequence[Sequence[Any]], new: Sequence[Sequence[Any]], descending: bool) -> list[tuple[Any, Any]]:
    """The changes that turn side `old` into side `new`, both best first (`descending` for bids).

    Best first: `(price, size)` for a level new or resized, `(price, 0)` for a level gone.
    """
    out: list[tuple[Any, Any]] = []
    i = j = 0
    n_old, n_new = len(old), len(new)
    while i < n_old and j < n_new:
        p, s = old[i]
        q, t = new[j]
        if p == q:
            if s != t:
                out.append((q, t))
            i += 1
            j += 1
        elif (p > q) == descending:  # the old level is better placed: it is gone
            out.append((p, 0))
            i += 1
        else:
            out.append((q, t))
            j += 1
    out.extend((p, 0) for p, _ in old[i:])
    out.extend((q, t) for q, t in new[j:])
    return out


def apply(side: Sequence[Sequence[Any]], changes: Sequence[Sequence[Any]], descending: bool) -> list[Any]:
    """Side `side` with `changes` (a delta side, best first) applied: size 0 removes a level, others set it."""
    out: list[Any] = []
    i = j = 0
    n_side, n_changes = len(side), len(changes)
    while i < n_side and j < n_changes:
        level = side[i]
        q, t = changes[j]
        p = level[0]
        if p == q:
            if t:
                out.append((q, t))
            i += 1
            j += 1
        elif (p > q) == descending:
            out.append(level)
            i += 1
        else:
            if t:
                out.append((q, t))
            j += 1
    out.extend(side[i:])
    out.extend((q, t) for q, t in changes[j:] if t)
    return out


class Replica:
    """A reader's copy of one instrument's book, in ticks and lots, kept from decoded messages.

    `snapshot` and `delta` take messages as `schema.decode` returns them and say what
    they made of them (TAKEN, APPLIED, STALE, WAITING, GAP, MISMATCH). After a GAP or a
    MISMATCH the replica is not `valid`: it drops deltas (WAITING) until a snapshot of
    its epoch at or after its seq, or of another epoch, replaces the book.
    """

    __slots__ = ("asks", "bids", "epoch", "inst", "seq", "valid")

    def __init__(self, inst: Instrument) -> None:
        self.inst = inst
        self.epoch: int | None = None
        self.seq = -1
        self.bids: list[tuple[int, int]] = []
        self.asks: list[tuple[int, int]] = []
        self.valid = False

    def snapshot(self, msg: dict[str, Any]) -> str:
        """A book message: TAKEN (or MISMATCH, taken all the same but not valid), or STALE."""
        epoch, seq = msg["epoch"], msg["seq"]
        if epoch == self.epoch and (seq < self.seq or (seq == self.seq and self.valid)):
            return STALE
        self.epoch, self.seq = epoch, seq
        self.bids, self.asks = self._units(msg["bids"]), self._units(msg["asks"])
        self.valid = checksum(self.bids, self.asks) == msg["checksum"]
        return TAKEN if self.valid else MISMATCH

    def delta(self, msg: dict[str, Any]) -> str:
        """A delta message: APPLIED, or STALE, WAITING, GAP, MISMATCH (the book is kept as it was)."""
        if not self.valid:
            return WAITING
        if msg["epoch"] != self.epoch:
            return STALE  # another run's: the snapshot of the new epoch resets the book
        seq = msg["seq"]
        if seq <= self.seq:
            return STALE
        if msg["prev_seq"] != self.seq:
            self.valid = False
            return GAP
        bids = apply(self.bids, self._units(msg["bids"]), True)
        asks = apply(self.asks, self._units(msg["asks"]), False)
        if checksum(bids, asks) != msg["checksum"]:
            self.valid = False
            return MISMATCH
        self.seq, self.bids, self.asks = seq, bids, asks
        return APPLIED

    def _units(self, levels: Any) -> list[tuple[int, int]]:
        try:
            return schema.units(levels, self.inst)
        except (TypeError, ValueError, OverflowError) as exc:
            raise MessageError(f"bad levels: {exc}") from None
