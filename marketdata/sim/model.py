"""The simulated exchange's order flow: a seeded, pure model that emits book events.

Per instrument a mid price drifts as a random walk. Limit orders arrive around
it, more often and larger near the touch (arrival and size both decay with the
distance); cancels take part or all of a resting level, mostly near the touch;
marketable orders walk the opposite side and print trades. A limit order priced
through the opposite touch is marketable too: it trades what it reaches and
rests the remainder, so the book follows the mid and is never crossed or locked.
Each side keeps between `min_depth` and `max_depth` levels: a walk stops before
it would empty too many levels, a cancel never removes a level of a side at
`min_depth`, a thin side is topped up from behind, and a new level beyond
`max_depth` pushes out the worst one.

Pure code: the model is handed a seeded `random.Random`, the timestamps and its
epoch (the run's name, which the server reads from its clock), and touches no
clock, no I/O and no protobuf. The same seed and the same calls give the same
events, whatever the epoch, which they only carry; each instrument draws from its
own generator (derived from the seed and its id), so its stream does not depend
on the other instruments or on how generation is split into calls.

A step may produce several events (trades, then the update they caused). The
book changes only when an Update is emitted, so `OrderBook.checksum()` after any
emitted event is the checksum of the book a consumer holds after that event.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from math import ceil, exp, floor, log
from typing import NamedTuple

from marketdata.book import ASK, BID, Level, OrderBook
from marketdata.errors import UnknownInstrument
from marketdata.instruments import Instrument

Change = tuple[int, int, int]
"""One absolute level change: (side, price ticks, size lots); size 0 removes the level."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole book, best-first on each side."""

    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


# Update and Trade are made once per event, so they are named tuples (a few times
# cheaper to make than frozen dataclasses) rather than dataclasses.


class Update(NamedTuple):
    """Level changes to apply in order on top of the book at seq - 1."""

    changes: tuple[Change, ...]


class Trade(NamedTuple):
    """A fill at one price level; `aggressor` is the side (BID/ASK) that took liquidity."""

    price: int
    size: int
    aggressor: int


Body = Snapshot | Update | Trade

# Update(x) runs a Python-level __new__; on the per-event path the tuple
# constructor is called directly instead: _make(Update, (x,)) is the same value.
_make = tuple.__new__


@dataclass(frozen=True, slots=True)
class Event:
    """One event of one instrument at (epoch, seq); `checksum` is the book's after it, where computed."""

    instrument: str
    seq: int
    ts: int
    body: Body
    checksum: int | None = None
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Events:
    """Consecutive events of one instrument, as `generate` returns them.

    Their seqs run from `first_seq` upward in `epoch`, all stamped `ts`; `checksum`
    (when computed) is the book's after the last one. Iterating gives `Event` values.
    """

    instrument: str
    first_seq: int
    ts: int
    bodies: tuple[Body, ...]
    checksum: int | None = None
    epoch: int = 0

    def __len__(self) -> int:
        return len(self.bodies)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.bodies) - 1

    def __iter__(self) -> Iterator[Event]:
        last = len(self.bodies) - 1
        for i, body in enumerate(self.bodies):
            yield Event(self.instrument, self.first_seq + i, self.ts, body, self.checksum if i == last else None, self.epoch)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shape of the order flow; the defaults give a lively but readable book."""

    min_depth: int = 20  # levels a side never goes below
    max_depth: int = 200  # levels a side never goes above
    initial_depth: int = 50  # levels a side starts with
    market_share: float = 0.05  # share of steps that are market orders
    cancel_share: float = 0.45  # share of steps that are cancels; the rest are limit orders
    reach: float = 12.0  # mean distance of a new limit order from the mid, in level gaps
    size_decay: float = 1.0  # a limit order's mean size shrinks by e every size_decay x reach from the mid
    target_depth: int = 60  # below it a side is topped up: some orders join behind its worst level
    top_up_share: float = 0.1  # share of a thin side's limit orders that top it up
    cancel_reach: float = 8.0  # mean index (from the touch) of the level a cancel hits
    cancel_part: float = 0.5  # mean share of its level a cancelled order held
    order_notional: float = 20_000.0  # mean order value in quote currency (fx: in base units x 20)

    def __post_init__(self) -> None:
        if not 1 <= self.min_depth <= self.initial_depth <= self.max_depth:
            raise ValueError("depths must satisfy 1 <= min_depth <= initial_depth <= max_depth")
        if self.market_share < 0 or self.cancel_share < 0 or self.market_share + self.cancel_share > 1:
            raise ValueError("market_share and cancel_share must be >= 0 and sum to at most 1")


class _Flow:
    """One instrument's book and order-flow state.

    Hot path: the distributions are drawn inline from `random()` (an exponential
    is -log(1 - u) * mean) because a method call costs as much as the draw.
    """

    __slots__ = (
        "id", "book", "rand", "mid", "low", "high", "walk", "reach", "decay", "cancel_reach", "lot", "pending",
        "min_depth", "max_depth", "target_depth", "top_up", "gap", "cancel_part", "market_cut", "cancel_cut",
        "buys", "sells",
    )  # fmt: skip

    def __init__(self, inst: Instrument, seed: int, cfg: ModelConfig) -> None:
        self.id = inst.id
        rng = random.Random(f"{seed}:{inst.id}")
        self.rand = rand = rng.random
        ref = inst.reference_ticks
        # Per-event volatility of the mid in ticks: about 0.1 bp, kept between a
        # quarter tick (quiet, tick-constrained books) and three ticks. The walk's
        # steps are uniform (one draw, cheaper than a Gaussian) with that deviation.
        vol = min(3.0, max(0.25, ref * 1e-5))
        self.walk = vol * 12**0.5
        # The typical gap between levels grows with volatility, so every book spans
        # a similar number of moves.
        gap = max(1, round(vol))
        self.reach = cfg.reach * gap
        self.decay = 1.0 / (cfg.size_decay * self.reach)
        self.cancel_reach = cfg.cancel_reach
        self.cancel_part = cfg.cancel_part
        self.mid = float(ref)
        self.low, self.high = ref * 0.5, ref * 1.5
        if inst.kind == "fx":
            mean_lots = 20 * cfg.order_notional / (inst.lot_units / inst.size_scale)
        else:
            price = ref * inst.tick_units / inst.price_scale
            mean_lots = cfg.order_notional / (price * inst.lot_units / inst.size_scale)
        self.lot = max(1.0, mean_lots)
        self.min_depth, self.max_depth = cfg.min_depth, cfg.max_depth
        self.target_depth, self.top_up, self.gap = min(cfg.target_depth, cfg.max_depth), cfg.top_up_share, gap
        self.market_cut = cfg.market_share
        self.cancel_cut = cfg.market_share + cfg.cancel_share
        self.pending: deque[Body] = deque()
        self.buys = self.sells = 0  # marketable orders that traded, per side
        bids: list[Level] = []
        asks: list[Level] = []
        bid, ask = ref - 1, ref + 1
        for _ in range(cfg.initial_depth):
            bids.append((bid, 3 * self._size()))
            asks.append((ask, 3 * self._size()))
            bid -= 1 + int(-log(1.0 - rand()) * gap)
            ask += 1 + int(-log(1.0 - rand()) * gap)
        self.book = OrderBook(inst.id)
        self.book.reset(0, bids, asks)

    def _size(self) -> int:
        return 1 + int(-log(1.0 - self.rand()) * self.lot)

    # -- one step of order flow: appends bodies to `pending`, changes nothing yet --

    def step(self) -> None:
        rand = self.rand
        m = self.mid + (rand() - 0.5) * self.walk
        if m < self.low:
            m = 2 * self.low - m
        elif m > self.high:
            m = 2 * self.high - m
        self.mid = m
        r = rand()
        side = BID if rand() < 0.5 else ASK
        if r < self.market_cut:
            self._take(side, 2 * self._size(), None)
        elif r < self.cancel_cut:
            self._cancel(side)
        else:
            self._limit(side)

    def _limit(self, side: int) -> None:
        book = self.book
        rand = self.rand
        if book.depth(side) < self.target_depth and rand() < self.top_up:
            # A thin side is topped up from behind: a small order past its worst level.
            step = 1 + int(-log(1.0 - rand()) * self.gap)
            price = book.level_at(side, -1)[0] + (-step if side == BID else step)
            if price > 0:
                self.pending.append(Update(((side, price, 1 + int(-log(1.0 - rand()) * self.lot * 0.2)),)))
                return
        d = int(-log(1.0 - rand()) * self.reach)
        # Orders near the touch are both more frequent and larger.
        size = 1 + int(-log(1.0 - rand()) * self.lot * exp(-d * self.decay))
        if side == BID:
            price = floor(self.mid - 0.5) - d
            if price >= book.level_at(ASK, 0)[0]:
                self._take(BID, size, price)
                return
        else:
            price = ceil(self.mid + 0.5) + d
            if price <= book.level_at(BID, 0)[0]:
                self._take(ASK, size, price)
                return
        have = book.size_at(side, price)
        if have or book.depth(side) < self.max_depth:
            self.pending.append(_make(Update, (((side, price, have + size),),)))  # the common case, inline
            return
        changes: list[Change] = []
        self._rest(side, price, size, changes)
        self.pending.append(Update(tuple(changes)))

    def _rest(self, side: int, price: int, size: int, changes: list[Change]) -> None:
        """Add `size` at `price` on `side` (not crossing), pushing out the worst level at max depth."""
        book = self.book
        have = book.size_at(side, price)
        if not have and book.depth(side) >= self.max_depth:
            worst, worst_size = book.level_at(side, -1)
            if (price < worst) if side == BID else (price > worst):
                price, have = worst, worst_size  # beyond the book's reach: join the worst level
            else:
                changes.append((side, worst, 0))
        changes.append((side, price, have + size))

    def _take(self, side: int, qty: int, limit: int | None) -> None:
        """A marketable order of `qty` lots on `side`, up to `limit` (None: any price).

        Walks the opposite side best-first and stops before it would leave that
        side with fewer than min_depth levels. The rest of a limit order rests at
        its limit when it took every level up to there; otherwise it is cancelled
        (immediate-or-cancel), so the book never crosses.
        """
        book = self.book
        opp = ASK if side == BID else BID
        may_empty = book.depth(opp) - self.min_depth
        trades: list[Trade] = []
        changes: list[Change] = []
        i = 0
        rest = limit is not None
        while qty > 0:
            price, size = book.level_at(opp, i)
            if limit is not None and ((price > limit) if side == BID else (price < limit)):
                break
            if size > qty:
                trades.append(Trade(price, qty, side))
                changes.append((opp, price, size - qty))
                qty = 0
                break
            if i >= may_empty:
                rest = False
                break
            trades.append(Trade(price, size, side))
            changes.append((opp, price, 0))
            qty -= size
            i += 1
        if not trades:
            # Nothing could trade without thinning the book too much: the order
            # becomes the new touch, one tick inside the opposite side.
            price = book.level_at(opp, 0)[0] + (-1 if side == BID else 1)
            self._rest(side, price, qty, changes)
            self.pending.append(Update(tuple(changes)))
            return
        if side == BID:
            self.buys += 1
        else:
            self.sells += 1
        if qty and rest:
            self._rest(side, limit, qty, changes)  # type: ignore[arg-type]
        self.pending.extend(trades)
        self.pending.append(Update(tuple(changes)))

    def _cancel(self, side: int) -> None:
        book = self.book
        depth = book.depth(side)
        idx = int(-log(1.0 - self.rand()) * self.cancel_reach)
        if idx >= depth:
            idx = depth - 1
        price, size = book.level_at(side, idx)
        # An order of the level leaves: mostly a part of it, sometimes all of it.
        qty = 1 + int(-log(1.0 - self.rand()) * size * self.cancel_part)
        if qty < size:
            left = size - qty
        elif depth > self.min_depth:
            left = 0
        elif size > 1:
            left = size // 2
        else:
            self._limit(side)  # nothing this side can lose: a new order instead
            return
        self.pending.append(_make(Update, (((side, price, left),),)))


class Model:
    """The order-flow model of a set of instruments (their books live here).

    `generate` emits the next events of one instrument; `snapshot` shows its book
    at the last emitted event. The books are the exchange's truth: read them, do
    not change them. Every event and book carries `epoch`, the name of this run
    handed in by the caller; seqs start at 0 in it.
    """

    __slots__ = ("_flows", "epoch", "instruments")

    def __init__(
        self, instruments: Iterable[Instrument], rng: random.Random, config: ModelConfig | None = None, epoch: int = 0
    ) -> None:
        cfg = config or ModelConfig()
        self.instruments: tuple[Instrument, ...] = tuple(instruments)
        self.epoch = epoch
        base = rng.getrandbits(64)
        self._flows: dict[str, _Flow] = {inst.id: _Flow(inst, base, cfg) for inst in self.instruments}
        for flow in self._flows.values():
            flow.book.epoch = epoch

    def _flow(self, instrument: str) -> _Flow:
        try:
            return self._flows[instrument]
        except KeyError:
            raise UnknownInstrument(instrument) from None

    def book(self, instrument: str) -> OrderBook:
        """The exchange's book of `instrument` after the last emitted event (read only)."""
        return self._flow(instrument).book

    def generate(self, instrument: str, count: int, ts: int, checksum: bool = True) -> Events:
        """The next `count` events of `instrument`, stamped `ts`.

        With `checksum`, the book's checksum after the last event is included (it
        costs more than generating an event, so it is never computed per event).
        """
        flow = self._flows.get(instrument) or self._flow(instrument)
        book = flow.book
        pending = flow.pending
        popleft = pending.popleft
        step = flow.step
        apply = book.apply
        bodies: list[Body] = []
        append = bodies.append
        for _ in range(count):
            if not pending:
                step()
            body = popleft()
            if body.__class__ is Update:
                apply(body[0])
            append(body)
        first = book.seq + 1
        book.seq += count
        return Events(instrument, first, ts, tuple(bodies), book.checksum() if checksum and count else None, book.epoch)

    def snapshot(self, instrument: str, ts: int) -> Event:
        """The whole book of `instrument` at its current seq, with its checksum."""
        book = self._flow(instrument).book
        return Event(instrument, book.seq, ts, Snapshot(tuple(book.bids()), tuple(book.asks())), book.checksum(), book.epoch)

    def trades_count(self, instrument: str) -> tuple[int, int]:
        """How many buy and sell orders have traded so far (a cheap activity gauge)."""
        flow = self._flow(instrument)
        return flow.buys, flow.sells
