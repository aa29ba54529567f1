"""The consumer side of the exchange stream: books rebuilt from events, verified.

Pure code over protobuf values (no gRPC, no I/O). The CLI client and the ingestor
both apply the stream through `Books`, so the checks are the same everywhere:
every incremental event must follow its book's (epoch, seq), and wherever the
exchange sent a checksum the rebuilt book must match it.

The order of one instrument's events is (epoch, seq) (the proto's Event.epoch):
a snapshot of an epoch other than its book's is a reset, taken at once whatever
its seq and whether that epoch is larger or smaller; within an epoch a snapshot
never moves a book back. An incremental event of another epoch cannot be applied
to anything: its epoch's snapshot is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from marketdata.book import BID, OrderBook
from marketdata.errors import (
    BookError,
    ChecksumMismatch,
    EpochMismatch,
    SequenceGap,
    UnknownInstrument,
)
from marketdata.instruments import Instrument
from marketdata.v1 import market_data_pb2 as pb


def listed_instruments(listed: Iterable[pb.Instrument]) -> dict[str, Instrument]:
    """The simulator's ListInstruments answer as reference data, by id, in its order."""
    return {
        i.id: Instrument(i.id, i.kind, i.description, i.tick_size, i.lot_size, i.price_decimals, i.size_decimals)
        for i in listed
    }


def select_instruments(listed: Iterable[pb.Instrument], wanted: Sequence[str]) -> list[Instrument]:
    """The simulator's instruments, or those of `wanted` in that order; UnknownInstrument names one not listed."""
    by_id = listed_instruments(listed)
    missing = [w for w in wanted if w not in by_id]
    if missing:
        raise UnknownInstrument(missing[0])
    return [by_id[w] for w in dict.fromkeys(wanted)] if wanted else list(by_id.values())


@dataclass(slots=True)
class BatchResult:
    """What one batch changed: instrument -> exchange time of its last event, and its trades.

    Only events applied to a ready book count; those skipped while a book waits for
    its snapshot appear nowhere.
    """

    changed: dict[str, int] = field(default_factory=dict)
    trades: list[pb.Event] = field(default_factory=list)
    snapshots: int = 0
    level_changes: int = 0


class Books:
    """The books of a set of instruments, rebuilt from snapshot and incremental events.

    A book is usable once its first snapshot arrived. Any BookError (gap, epoch
    mismatch, checksum mismatch) leaves that book unusable until the next snapshot
    replaces it. Each book carries its epoch (`OrderBook.epoch`); `epoch` is that of
    the last snapshot applied, the stream's, None before the first.
    """

    __slots__ = ("_ready", "books", "epoch")

    def __init__(self, instruments: Iterable[str]) -> None:
        self.books: dict[str, OrderBook] = {i: OrderBook(i) for i in instruments}
        self.epoch: int | None = None
        self._ready: set[str] = set()

    def is_ready(self, instrument: str) -> bool:
        return instrument in self._ready

    def invalidate(self, instrument: str | None = None) -> None:
        """Forget one book (or all) until its next snapshot."""
        if instrument is None:
            self._ready.clear()
        else:
            self._ready.discard(instrument)

    def apply(self, event: pb.Event) -> str:
        """Apply one event and verify it; return its kind ("snapshot", "update", "trade").

        Raises SequenceGap (also for a snapshot that would move its book back within
        an epoch), EpochMismatch, ChecksumMismatch (the book is then unusable until
        the next snapshot) or UnknownInstrument. Incremental events for a book still
        waiting for its snapshot are skipped.
        """
        kind = event.WhichOneof("body") or "unknown"
        self._apply(event, event.instrument, kind)
        return kind

    def _apply(self, event: pb.Event, name: str, kind: str) -> int:
        """Apply one event; return the number of level changes applied, -1 if it was skipped.

        The caller has read `name` and `kind` already: each protobuf field read costs
        about as much as a book change, so none is read twice.
        """
        book = self.books.get(name)
        if book is None:
            raise UnknownInstrument(name)
        applied = 0
        if kind == "snapshot":
            epoch, seq = event.epoch, event.seq
            if epoch == book.epoch and seq < book.seq:
                self._ready.discard(name)
                raise SequenceGap(name, book.seq, seq)
            snap = event.snapshot
            book.reset(seq, [(lv.price, lv.size) for lv in snap.bids], [(lv.price, lv.size) for lv in snap.asks], epoch)
            self.epoch = epoch
            self._ready.add(name)
        elif name not in self._ready:
            return -1
        else:
            if event.epoch != book.epoch:
                self._ready.discard(name)
                raise EpochMismatch(name, book.epoch, event.epoch)
            try:
                book.advance(event.seq)
            except BookError:
                self._ready.discard(name)
                raise
            if kind == "update":
                changes = event.update.changes
                set_bid, set_ask = book.set_bid, book.set_ask
                for lv in changes:
                    if lv.side == BID:
                        set_bid(lv.price, lv.size)
                    else:
                        set_ask(lv.price, lv.size)
                applied = len(changes)
        if event.HasField("checksum"):
            ours = book.checksum()
            if ours != event.checksum:
                self._ready.discard(name)
                raise ChecksumMismatch(name, event.seq, event.checksum, ours)
        return applied

    def apply_batch(self, events: Iterable[pb.Event]) -> BatchResult:
        """Apply a batch in order; the result says which books changed (for coalescing)."""
        result = BatchResult()
        changed, trades, apply = result.changed, result.trades, self._apply
        snapshots = level_changes = 0
        for event in events:
            name = event.instrument
            kind = event.WhichOneof("body") or "unknown"
            applied = apply(event, name, kind)
            if applied < 0:
                continue  # skipped: its book still waits for a snapshot
            changed[name] = event.ts
            if kind == "update":
                level_changes += applied
            elif kind == "trade":
                trades.append(event)
            elif kind == "snapshot":
                snapshots += 1
        result.snapshots, result.level_changes = snapshots, level_changes
        return result
