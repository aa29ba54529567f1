"""What the ingestor publishes: verified books in, encoded snapshots, trades and Redis commands out.

Pure code (no gRPC, no Redis connection, no clock): `PublishQueue` applies
simulator batches to `feed.Books` and keeps what is due since the last drain, one
snapshot per changed instrument (coalescing); `drain_commands` turns a drain into a
few pipelined Redis commands whatever its size, each one fenced by the publishing
lease (marketdata.ingest.lease); on Redis Cluster `slot_writes.slot_commands` does the
same with one script per slot. The ingestor is the shell that feeds it batches and
sends the bytes; a standby feeds it the same batches and `discard`s what is due.

Every book and trade goes out with its epoch (the simulator's run). A snapshot of
a new epoch replaces its book in `feed.Books`, so what is published after it is the
new run's book, never a merge of two.

Beside each snapshot goes a delta from the previous book published of the instrument
(marketdata.delta), computed from the levels published last, kept here in ticks and
lots. There is none for the first book of an epoch, nor for the first after
`republish_all` (Redis came back, or the lease was taken) or a standby's `discard`:
what readers hold then is unknown, and they resync from the snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from marketdata import schema
from marketdata.book import Level, OrderBook
from marketdata.delta import diff
from marketdata.errors import BookError
from marketdata.feed import Books
from marketdata.ingest.lease import FENCE, Command, Fence
from marketdata.ingest.slot_writes import SLOT_LUA, slot_published
from marketdata.instruments import Instrument
from marketdata.settings import IngestSettings
from marketdata.v1 import market_data_pb2 as pb

MAX_PENDING = 20_000  # trades, or snapshots with coalescing off, held while Redis is away; the oldest go first


@dataclass(slots=True)
class IngestStats:
    """Counters for tests, logs and the benchmark; they only grow."""

    events: int = 0
    level_changes: int = 0
    snapshots: int = 0  # snapshot events received
    trades: int = 0  # trade events received
    batches: int = 0  # gRPC messages read
    drains: int = 0  # pipelines written
    publishes: int = 0  # book snapshots published
    delta_publishes: int = 0  # deltas published beside them
    trade_publishes: int = 0
    gaps: int = 0
    checksum_mismatches: int = 0
    resubscribes: int = 0
    epoch_changes: int = 0  # simulator runs that replaced the one before (a restart)
    reconnects: int = 0  # simulator connections retried
    redis_reconnects: int = 0
    dropped: int = 0  # messages given up while Redis was away (trades; snapshots when not coalescing)
    fenced_writes: int = 0  # scripts Redis refused because our lease value was no longer the lease's
    leader_changes: int = 0  # times this ingestor took or lost the publishing lease


Delta = tuple[bytes, bytes]  # (channel, payload)


@dataclass(slots=True)
class Drain:
    """What one round trip writes: the instrument list (when due), book snapshots and their deltas, trades."""

    instruments: bytes | None = None
    books: list[tuple[bytes, bytes]] = field(default_factory=list)  # (channel = key, payload), in order
    deltas: list[Delta | None] = field(default_factory=list)  # empty, or one per book: its delta, if any
    trades: dict[bytes, list[bytes]] = field(default_factory=dict)  # channel = list key -> payloads, oldest first
    trade_count: int = 0

    def __bool__(self) -> bool:
        return self.instruments is not None or bool(self.books) or bool(self.trades)


class PublishQueue:
    """The books and what is waiting to be published: pure, no I/O, no clock.

    `apply` takes one gRPC batch; `take` returns everything due since the last take,
    encoded, with book snapshots coalesced to one per instrument (or, with
    coalesce=False, one per event, encoded right after each event).
    """

    def __init__(self, instruments: Iterable[Instrument], settings: IngestSettings, stats: IngestStats) -> None:
        self.instruments = {inst.id: inst for inst in instruments}
        self.books = Books(self.instruments)
        keys = schema.Keys(settings.prefix, cluster=settings.redis_cluster)
        self.book_keys = {name: keys.book(name).encode() for name in self.instruments}
        self.trade_keys = {name: keys.trades(name).encode() for name in self.instruments}
        self.delta_keys = {name: keys.deltas(name).encode() for name in self.instruments}
        self.depth = settings.depth
        self.coalesce = settings.coalesce
        self.stats = stats
        self.instruments_payload = schema.encode_instruments(self.instruments.values())
        self.instruments_due = True
        self._changed: dict[str, int] = {}  # instrument -> exchange ts of its last applied event
        self._last_ts: dict[str, int] = {}
        self._books_out: list[tuple[bytes, bytes, Delta | None]] = []  # coalesce=False only
        # instrument -> (epoch, seq, bids, asks) of the last book encoded for publishing: the base of the next delta
        self._published: dict[str, tuple[int, int, list[Level], list[Level]]] = {}
        self._trades_out: dict[bytes, list[bytes]] = {}
        self._trade_count = 0

    def apply(self, events: Sequence[pb.Event], pts: int) -> None:
        """Apply one batch, whole. A BookError leaves every book unusable until its next snapshot."""
        try:
            if self.coalesce:
                result = self.books.apply_batch(events)
                self._changed.update(result.changed)
                trades, stats = result.trades, self.stats
                stats.level_changes += result.level_changes
                stats.snapshots += result.snapshots
            else:
                trades = self._apply_each(events, pts)
        except BookError:
            # The books are part-way through a batch: publish none of them until fresh snapshots.
            self.books.invalidate()
            self._changed.clear()
            raise
        if trades:
            self._add_trades(trades)

    def _apply_each(self, events: Sequence[pb.Event], pts: int) -> list[pb.Event]:
        apply, is_ready, books, stats = self.books.apply, self.books.is_ready, self.books.books, self.stats
        out: list[tuple[bytes, bytes, Delta | None]] = []
        trades = []
        for event in events:
            kind = apply(event)
            name = event.instrument
            if not is_ready(name):
                continue  # skipped: its book waits for a snapshot
            if kind == "update":
                stats.level_changes += len(event.update.changes)
            elif kind == "trade":
                trades.append(event)
            elif kind == "snapshot":
                stats.snapshots += 1
            out.append(self._encode(name, books[name], event.ts, pts))
            self._last_ts[name] = event.ts
        pending = self._books_out
        pending.extend(out)  # only once the whole batch verified
        if len(pending) > MAX_PENDING:
            stats.dropped += len(pending) - MAX_PENDING
            del pending[: len(pending) - MAX_PENDING]
            self._cut_chains()  # the books they applied to will never be published
        return trades

    def _add_trades(self, trades: list[pb.Event]) -> None:
        out, encode, insts, keys = self._trades_out, schema.encode_trade, self.instruments, self.trade_keys
        for ev in trades:
            name, t = ev.instrument, ev.trade
            payload = encode(insts[name], ev.seq, ev.ts, t.price, t.size, t.aggressor, ev.epoch)
            pending = out.get(keys[name])
            if pending is None:
                out[keys[name]] = [payload]
            else:
                pending.append(payload)
        self.stats.trades += len(trades)
        self._trade_count += len(trades)
        if self._trade_count > MAX_PENDING:  # Redis is away: keep the newest of each instrument
            keep = MAX_PENDING // len(out)
            for pending in out.values():
                if len(pending) > keep:
                    self.stats.dropped += len(pending) - keep
                    del pending[: len(pending) - keep]
            self._trade_count = sum(map(len, out.values()))

    def _encode(self, name: str, book: OrderBook, ts: int, pts: int) -> tuple[bytes, bytes, Delta | None]:
        """(key, snapshot, delta or None) of the book as it is now; it becomes the base of the next delta."""
        inst, depth, epoch, seq = self.instruments[name], self.depth, book.epoch, book.seq
        bids, asks, crc = book.bids(depth), book.asks(depth), book.checksum()
        snapshot = schema.encode_snapshot(inst, epoch, seq, bids, asks, ts, pts, crc)
        prev = self._published.get(name)
        self._published[name] = (epoch, seq, bids, asks)
        if prev is None or prev[0] != epoch or prev[1] >= seq:
            return self.book_keys[name], snapshot, None
        changes = schema.encode_delta(inst, epoch, seq, prev[1], diff(prev[2], bids, True), diff(prev[3], asks, False), ts, pts, crc)
        return self.book_keys[name], snapshot, (self.delta_keys[name], changes)

    def _cut_chains(self) -> None:
        """The first pending book of each instrument goes out without its delta (the one before it was dropped)."""
        first: set[bytes] = set()
        pending = self._books_out
        for i, (key, snapshot, delta) in enumerate(pending):
            if key not in first:
                first.add(key)
                if delta is not None:
                    pending[i] = (key, snapshot, None)

    def take(self, pts: int) -> Drain:
        """Everything due now, encoded; `pts` is the publish time stamped on the snapshots."""
        drain = Drain()
        if self.instruments_due:
            drain.instruments = self.instruments_payload
            self.instruments_due = False
        if self._changed:
            changed, self._changed = self._changed, {}
            self._last_ts.update(changed)
            is_ready, books, encode = self.books.is_ready, self.books.books, self._encode
            out = [encode(n, books[n], ts, pts) for n, ts in changed.items() if is_ready(n)]
        else:
            out = []
        if self._books_out:
            out.extend(self._books_out)
            self._books_out = []
        if out:
            drain.books = [(key, snapshot) for key, snapshot, _ in out]
            deltas = [delta for _, _, delta in out]
            if any(deltas):
                drain.deltas = deltas
        if self._trades_out:
            drain.trades, drain.trade_count = self._trades_out, self._trade_count
            self._trades_out, self._trade_count = {}, 0
        return drain

    @property
    def epoch(self) -> int | None:
        """The simulator's epoch, as its last snapshot gave it; None before the first."""
        return self.books.epoch

    def discard(self) -> None:
        """Drop what is due without encoding it (a standby's turn); `republish_all` brings the books back."""
        if self._changed:
            self._last_ts.update(self._changed)
            self._changed = {}
        self._books_out = []
        self._published.clear()
        if self._trades_out:
            self._trades_out, self._trade_count = {}, 0

    def republish_all(self) -> None:
        """Make every usable book and the instrument list due again (Redis came back, or the lease was taken)."""
        self.instruments_due = True
        self._published.clear()  # readers may hold anything: the next book of each goes without a delta
        if self._books_out:
            self._cut_chains()
        for name, ts in self._last_ts.items():
            if self.books.is_ready(name):
                self._changed.setdefault(name, ts)
# Each drain is a few commands whatever its size: the scripts do the per-message
# PUBLISH, SET, LPUSH and LTRIM inside Redis, atomically, so a reader never sees a
# key ahead of or behind its channel, and the ingestor packs one argument per
# message instead of a whole command (redis-py takes about 20 us to pack a command).
# Each starts with the lease's FENCE (KEYS[1] the lease key, ARGV[1] the writer's
# value), so their own keys and arguments start at index 2, and each returns the
# number of messages it published.
_INSTRUMENTS_LUA = FENCE + b"""
redis.call('SET', KEYS[2], ARGV[2])
return 0
"""
_BOOKS_LUA = FENCE + b"""
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i])
  redis.call('PUBLISH', KEYS[i], ARGV[i])
end
return #KEYS - 1
"""
# The same with deltas: after the n snapshots, ARGV holds n delta channels then n delta
# payloads ('' where a book has none). A delta goes out just before its snapshot, so a
# bridge reads first the delta, which applies to the book it forwarded last, then the
# snapshot that follows from it (for the sockets the delta could not serve).
_BOOKS_DELTAS_LUA = FENCE + b"""
local n = #KEYS - 1
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i])
  local delta = ARGV[i + 2 * n]
  if delta ~= '' then redis.call('PUBLISH', ARGV[i + n], delta) end
  redis.call('PUBLISH', KEYS[i], ARGV[i])
end
return n
"""
_TRADES_LUA = FENCE + b"""
local keep = tonumber(ARGV[2])
for i = 3, #ARGV do redis.call('PUBLISH', KEYS[2], ARGV[i]) end
for i = math.max(3, #ARGV - keep + 1), #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], 0, keep - 1)
return #ARGV - 2
"""


def drain_commands(drain: Drain, instruments_key: bytes, history: int, fence: Fence) -> list[Command]:
    """The drain as a few fenced Redis commands for one pipelined round trip, whatever its size.

    One EVAL that SETs the instrument list (when due); one that does SET + PUBLISH of
    every snapshot in order (with the PUBLISH of its delta just before, if it has one);
    per instrument with trades, one that PUBLISHes each trade,
    LPUSHes the newest `history` (so the list is newest first) and LTRIMs the list to
    `history`. Each writes nothing unless the lease still holds `fence.value`.
    """
    lease, value = fence.key, fence.value
    commands: list[Command] = []
    if drain.instruments is not None:
        commands.append((b"EVAL", _INSTRUMENTS_LUA, b"2", lease, instruments_key, value, drain.instruments))
    if drain.books:
        keys = [k for k, _ in drain.books]
        payloads = [p for _, p in drain.books]
        if drain.deltas:
            channels = [d[0] if d else b"" for d in drain.deltas]
            deltas = [d[1] if d else b"" for d in drain.deltas]
            commands.append((b"EVAL", _BOOKS_DELTAS_LUA, b"%d" % (len(keys) + 1), lease, *keys, value, *payloads, *channels, *deltas))
        else:
            commands.append((b"EVAL", _BOOKS_LUA, b"%d" % (len(keys) + 1), lease, *keys, value, *payloads))
    for key, payloads in drain.trades.items():
        commands.append((b"EVAL", _TRADES_LUA, b"2", lease, key, value, b"%d" % history, *payloads))
    return commands


def tally(commands: Sequence[Command], results: Sequence[object], stats: IngestStats) -> list[Exception]:
    """Count what a round trip of `drain_commands` (or `slot_writes.slot_commands`) published into `stats`; return the scripts' errors.

    Each script answers the number of messages it published, or an error (a fence's
    refusal, or anything else Redis refused) and then it wrote nothing.
    """
    errors: list[Exception] = []
    for command, result in zip(commands, results):
        if isinstance(result, Exception):
            errors.append(result)
        elif command[1] is _BOOKS_LUA:
            stats.publishes += int(result)  # type: ignore[call-overload]
        elif command[1] is _BOOKS_DELTAS_LUA:
            n = int(result)  # type: ignore[call-overload]
            stats.publishes += n
            stats.delta_publishes += sum(1 for d in command[len(command) - n:] if d)
        elif command[1] is _TRADES_LUA:
            stats.trade_publishes += int(result)  # type: ignore[call-overload]
        elif command[1] is SLOT_LUA:
            books, deltas, trades = slot_published(result)
            stats.publishes += books
            stats.delta_publishes += deltas
            stats.trade_publishes += trades
    if len(errors) < len(commands):
        stats.drains += 1
    return errors
