"""What the fault suite checks on every message, and what one fault did to one socket: pure code.

`Verifier` proves a book message on its own: it decodes, and its checksum matches its
levels read back with the instrument's tick and lot sizes (marketdata.schema.book_checksum,
as the dashboard's crc32.js does). Every socket of an instrument receives the same bytes
(the bridge forwards them untouched), so the verdict is kept per distinct payload: a
message is checked by looking its exact bytes up among those already proven, which is
the same check done once.

`Order` is one instrument's order on one socket, across its reconnections: within an
epoch `seq` only goes forward (a reconnection's first book may repeat the last one: it is
the last value again), a new epoch is a reset, an epoch left behind never comes back.

`Watch` is one socket's timeline from the moment a fault is marked: when the socket was
told the feed is stale (or lost its connection), when fresh books arrived on every
instrument it follows. `judge` turns a watch and what the fault should do (`Expect`) into
the heal time and the problems, each a line naming the socket.

No I/O and no clock: times are handed in (monotonic seconds, and wall µs for `pts`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from marketdata import schema
from marketdata.errors import MessageError
from marketdata.instruments import Instrument

if TYPE_CHECKING:
    from bench.fault_sockets import SocketPlan

CHECKSUM, ORDER, OTHER = "bad checksum", "out of order", "other"  # kinds of bad message
MAX_KEPT = 50  # violations kept per socket (the rest are counted)
CACHE_LIMIT = 4096  # distinct payloads remembered; the feed moves on, old ones are never seen again
NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class Book:
    """What the suite needs of one book message; `problem` says why it failed verification (None: verified)."""

    instrument: str
    epoch: int
    seq: int
    pts: int
    problem: str | None = None
    kind: str = OTHER  # of the problem


class Verifier:
    """Decodes and proves book messages against the listed instruments, once per distinct payload."""

    def __init__(self, instruments: Iterable[Instrument]) -> None:
        self.instruments: Mapping[str, Instrument] = {i.id: i for i in instruments}
        self._seen: dict[bytes, Book] = {}

    def book(self, payload: bytes) -> Book:
        known = self._seen.get(payload)
        if known is not None:
            return known
        book = self._prove(payload)
        if len(self._seen) >= CACHE_LIMIT:
            self._seen.clear()
        self._seen[payload] = book
        return book

    def _prove(self, payload: bytes) -> Book:
        try:
            msg = schema.decode(payload)
        except MessageError as exc:
            return Book("?", -1, -1, 0, f"malformed: {exc}")
        name = msg["instrument"]
        epoch, seq, pts = msg["epoch"], msg["seq"], msg.get("pts", 0)
        inst = self.instruments.get(name)
        if inst is None:
            return Book(name, epoch, seq, pts, f"book of an unlisted instrument {name!r}")
        try:
            mine = schema.book_checksum(msg, inst)
        except MessageError as exc:
            return Book(name, epoch, seq, pts, f"malformed: {exc}")
        if mine != msg["checksum"]:
            return Book(name, epoch, seq, pts, f"bad checksum at ({epoch}, {seq}): the levels give {mine}, the message says {msg['checksum']}", CHECKSUM)
        return Book(name, epoch, seq, pts)


@dataclass(slots=True)
class Order:
    """One instrument's (epoch, seq) on one socket, kept across its reconnections."""

    epoch: int = -1
    seq: int = -1
    left: set[int] = field(default_factory=set)  # epochs moved away from

    def check(self, epoch: int, seq: int, first_on_connection: bool) -> str | None:
        """Take a book at (epoch, seq); why it is out of order, or None."""
        if epoch == self.epoch:
            if seq > self.seq or (seq == self.seq and first_on_connection):
                self.seq = seq
                return None
            return f"seq {seq} after seq {self.seq} in epoch {epoch}"
        if epoch in self.left:
            return f"epoch {epoch} again after the reset to epoch {self.epoch}"
        if self.epoch >= 0:
            self.left.add(self.epoch)
        self.epoch, self.seq = epoch, seq
        return None


@dataclass(slots=True)
class Watch:
    """One socket's timeline since a fault was marked at `t0` (monotonic seconds).

    A book is fresh when it is verified, was published at or after `after_us` (wall µs,
    stamped once the fault has happened: nothing the victim sent before counts) and, when
    `epoch_before` is given (a simulator restart), belongs to another epoch than the
    instrument had at the mark. `fresh_at` is when every instrument of the socket had one.
    `longest_gap` is the longest wait for a verified book of one instrument since `t0`
    (`gap_of` names it): a socket that must not notice the fault must not wait either.
    """

    t0: float
    pending: set[str]
    after_us: float = NEVER
    epoch_before: dict[str, int] | None = None
    stale_at: float | None = None
    stale_how: str = ""
    closed_at: float | None = None
    closed_how: str = ""
    fresh_at: float | None = None
    longest_gap: float = 0.0
    gap_of: str = ""
    last_book: dict[str, float] = field(default_factory=dict)

    def feed(self, live: bool, reason: str, now: float) -> None:
        if not live and self.stale_at is None:
            self.stale_at, self.stale_how = now, f"feed stale ({reason})"

    def closed(self, how: str, now: float) -> None:
        if self.closed_at is None:
            self.closed_at, self.closed_how = now, how

    def book(self, book: Book, now: float) -> None:
        if book.problem is None:
            gap = now - self.last_book.get(book.instrument, self.t0)
            self.last_book[book.instrument] = now
            if gap > self.longest_gap:
                self.longest_gap, self.gap_of = gap, book.instrument
        if self.fresh_at is not None or book.problem is not None or book.pts < self.after_us:
            return
        if self.epoch_before is not None and book.epoch == self.epoch_before.get(book.instrument):
            return
        self.pending.discard(book.instrument)
        if not self.pending:
            self.fresh_at = now


@dataclass(slots=True)
class Violations:
    """What went wrong on one socket (or the bus): the first MAX_KEPT lines, and a count of each kind."""

    kept: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, text: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.kept) < MAX_KEPT:
            self.kept.append(text)

    def take(self) -> tuple[list[str], dict[str, int]]:
        """The lines since the last take (plus one for those not kept) and the counts by kind."""
        lines, counts = self.kept, self.counts
        more = sum(counts.values()) - len(lines)
        if more:
            lines.append(f"... and {more} more like them")
        self.kept, self.counts = [], {}
        return lines, counts


REQUIRED, ALLOWED, FORBIDDEN = "required", "allowed", "forbidden"


@dataclass(frozen=True, slots=True)
class Expect:
    """What a fault should do to a group of sockets.

    `stale`: whether a stale signal is required (within `stale_within` s of the fault),
    allowed, or forbidden ("nothing visible"). `closing`: whether losing the connection
    counts as that signal (the killed bridge's sockets); elsewhere a closed socket is a
    problem, since sockets stay open. `fresh_within`: seconds after `back` (the process
    restarted, or the fault itself when nothing is restarted) by which every instrument
    of the socket must have a fresh book. `what_back` names that moment in messages.
    """

    stale: str
    fresh_within: float
    what_back: str
    closing: bool = False
    stale_within: float = 2.0
    max_gap: float | None = None  # seconds a socket may wait for a book of one of its instruments (None: not judged)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One socket through one fault: seconds from the fault to its stale signal and to fresh books, and what went wrong."""

    socket: str
    stale_s: float | None
    heal_s: float | None
    problems: tuple[str, ...]


def judge(name: str, watch: Watch, expect: Expect, back: float, live: bool | None) -> Outcome:
    """The outcome of one socket's watch; `back` is when the fault's process was back, `live` its feed state now."""
    t0 = watch.t0
    problems: list[str] = []
    signal_at, how = watch.stale_at, watch.stale_how
    if expect.closing and watch.closed_at is not None and (signal_at is None or watch.closed_at < signal_at):
        signal_at, how = watch.closed_at, watch.closed_how
    elif watch.closed_at is not None:
        problems.append(f"{name}: {watch.closed_how} {watch.closed_at - t0:.2f} s after the fault, where sockets stay open")
    stale_s = None if signal_at is None else signal_at - t0
    if expect.stale == REQUIRED:
        if stale_s is None:
            problems.append(f"{name}: no stale signal at all")
        elif stale_s > expect.stale_within:
            problems.append(f"{name}: stale signalled {stale_s:.2f} s after the fault ({how}), over {expect.stale_within:g} s")
    elif expect.stale == FORBIDDEN and watch.stale_at is not None:
        problems.append(f"{name}: {watch.stale_how} {watch.stale_at - t0:.2f} s after the fault, where nothing should be visible")
    if expect.max_gap is not None and watch.longest_gap > expect.max_gap:
        problems.append(f"{name}: waited {watch.longest_gap:.2f} s for a book of {watch.gap_of}, over {expect.max_gap:g} s")
    heal_s = None if watch.fresh_at is None else watch.fresh_at - t0
    if watch.fresh_at is None:
        waiting = ", ".join(sorted(watch.pending))
        problems.append(f"{name}: no fresh book of {waiting} (within {expect.fresh_within:g} s of {expect.what_back} or ever after)")
    elif watch.fresh_at - back > expect.fresh_within:
        problems.append(f"{name}: fresh books {watch.fresh_at - back:.2f} s after {expect.what_back}, over {expect.fresh_within:g} s")
    if live is not True:
        problems.append(f"{name}: the feed is not live again (last state: {'none yet' if live is None else 'stale'})")
    return Outcome(name, stale_s, heal_s, tuple(problems))


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of `values`, nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


@dataclass(slots=True)
class Struck:
    """A fault as it happened: when, what came back when, and what each socket should have seen."""

    victim: str
    t0: float  # monotonic, just before the strike
    back: float  # monotonic, when the process was back (t0 when nothing is restarted)
    down_s: float
    homes: dict[int, int | None]  # socket index -> bridge it was on at the fault
    expect: Callable[[int | None, SocketPlan], Expect]  # by the bridge a socket was on, and the socket
    group: Callable[[int | None, SocketPlan], str | None]  # whose heal times make which figures (None: none)
    heal_by: float  # monotonic: wait for fresh books until then at most
    restore: Callable[[], list[str]] = list  # after the heal: bring the system back whole; problems seen
    elsewhere: tuple[str, ...] = ()  # groups that heal without the process back (sockets failing over)


@dataclass(slots=True)
class FaultResult:
    kind: str
    round: int
    victim: str
    down_s: float
    back_s: float
    heal_s: dict[str, list[float]] = field(default_factory=dict)  # by group of sockets, seconds from the fault
    stale_s: dict[str, list[float]] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)  # deadlines and expectations, per socket
    bad_messages: list[str] = field(default_factory=list)  # checksum, order, malformed: sockets and bus
    bad_counts: dict[str, int] = field(default_factory=dict)  # the same, counted by kind (fault_checks.CHECKSUM, ...)
    sockets: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # name: (stale s, heal s)
    problems: list[str] = field(default_factory=list)  # the system did not come back whole
    elsewhere: tuple[str, ...] = ()  # groups whose heal does not wait for the process (no "after back" figure)

    @property
    def failures(self) -> list[str]:
        return [*self.bad_messages, *self.missed, *self.problems]
