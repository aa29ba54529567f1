"""Order book benchmark: apply throughput, top-25 reads, checksum, and Books.apply_batch.

Run: .venv/bin/python bench/bench_book.py   (about 10 s of CPU; --quick for a smoke run)

Every figure is the median of several repeats timed with time.perf_counter (wall clock);
the median of time.thread_time (CPU time of this thread) is printed beside it, since on
a shared machine the wall clock also counts the time other processes held the core. The change
stream is made up front from a seeded random.Random (not timed) and replayed on a fresh
copy of the same ~1,000-level-a-side book in each repeat, so every repeat does the same
work: mostly size changes on existing levels near the touch, some inserts and deletes.
Targets (issue): apply >= 2M changes/s, top-25 read < 5 us at 1,000 levels.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import reference_line  # noqa: E402
from marketdata.book import ASK, BID, OrderBook  # noqa: E402
from marketdata.feed import Books  # noqa: E402
from marketdata.v1 import market_data_pb2 as pb  # noqa: E402

MID = 1_000_000  # bids at MID and below, asks above: the stream never crosses the book
LEVELS = 1_000
Change = tuple[int, int, int]


def initial_levels(rng: random.Random) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    bids = [(MID - i, rng.randint(1, 500)) for i in range(LEVELS)]
    asks = [(MID + 1 + i, rng.randint(1, 500)) for i in range(LEVELS)]
    return bids, asks


def change_stream(rng: random.Random, n: int) -> tuple[list[Change], dict[str, int]]:
    """n absolute level changes and how many were size changes, inserts and deletes.

    A change lands at a distance from the touch drawn from an exponential law (mean 8
    levels), so activity clusters near the top as on a real book; 12% of changes delete
    a level, and the holes they leave are refilled later (inserts), so depth stays ~1,000.
    """
    bids, asks = initial_levels(random.Random(0))
    live = {BID: {p for p, _ in bids}, ASK: {p for p, _ in asks}}
    mix = {"size": 0, "insert": 0, "delete": 0}
    out: list[Change] = []
    expo, rand, randint = rng.expovariate, rng.random, rng.randint
    for _ in range(n):
        side = BID if rand() < 0.5 else ASK
        d = min(int(expo(1 / 8)), LEVELS - 1)
        price = MID - d if side == BID else MID + 1 + d
        present = price in live[side]
        if present and rand() < 0.12:
            live[side].discard(price)
            out.append((side, price, 0))
            mix["delete"] += 1
        else:
            if not present:
                live[side].add(price)
            out.append((side, price, randint(1, 500)))
            mix["size" if present else "insert"] += 1
    return out, mix


def fresh_book(bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> OrderBook:
    book = OrderBook("BENCH")
    book.reset(0, bids, asks)
    return book


class Times:
    """Wall and CPU seconds of each repeat of one measurement."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, fn: Callable[[], object]) -> None:
        gc.collect()
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.thread_time()
        self.wall.append(t1 - t0)
        self.cpu.append(c1 - c0)

    def rate(self, work: int) -> tuple[float, float]:
        """Work per second: (wall median, CPU median)."""
        return work / statistics.median(self.wall), work / statistics.median(self.cpu)

    def each_us(self, calls: int) -> tuple[float, float]:
        """Microseconds per call: (wall median, CPU median)."""
        return statistics.median(self.wall) / calls * 1e6, statistics.median(self.cpu) / calls * 1e6


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> tuple[float, float]:
    """Median over repeats of the time of one call, in microseconds (a loop of `calls` calls)."""

    def loop() -> None:
        for _ in range(calls):
            fn()

    times = Times()
    for _ in range(repeats):
        times.run(loop)
    return times.each_us(calls)


def bench_apply(changes: list[Change], repeats: int) -> dict[str, tuple[float, float]]:
    """Changes/s (wall, CPU) of the three ways to apply level changes to one book."""
    bids, asks = initial_levels(random.Random(0))

    def with_apply(book: OrderBook) -> None:
        book.apply(changes)

    def with_set(book: OrderBook) -> None:
        set_ = book.set
        for side, price, size in changes:
            set_(side, price, size)

    def with_set_side(book: OrderBook) -> None:
        set_bid, set_ask = book.set_bid, book.set_ask
        for side, price, size in changes:
            if side == BID:
                set_bid(price, size)
            else:
                set_ask(price, size)

    variants = {
        "OrderBook.apply(changes)": with_apply,
        "OrderBook.set(side, price, size)": with_set,
        "set_bid/set_ask": with_set_side,
    }
    results = {name: Times() for name in variants}
    for _ in range(repeats):  # interleaved, so load on the machine hits every variant alike
        for name, fn in variants.items():
            book = fresh_book(bids, asks)
            results[name].run(lambda: fn(book))  # noqa: B023 (called at once)
    return {name: times.rate(len(changes)) for name, times in results.items()}


def pb_batches(changes: list[Change], instruments: int, per_batch: int, rng: random.Random) -> tuple[list[pb.Event], list[list[pb.Event]], int]:
    """Snapshot events, then batches of update/trade events round-robin over `instruments`.

    Each update carries 1-4 changes; one event in 20 is a trade. The last event of each
    instrument in a batch carries the checksum, as the simulator sends it.
    """
    bids, asks = initial_levels(random.Random(0))
    names = [f"I{i}" for i in range(instruments)]
    truth = {n: fresh_book(bids, asks) for n in names}
    seq = dict.fromkeys(names, 0)
    snaps = []
    for n in names:
        ev = pb.Event(instrument=n, seq=0, ts=1)
        ev.snapshot.bids.extend(pb.Level(side=BID, price=p, size=s) for p, s in bids)
        ev.snapshot.asks.extend(pb.Level(side=ASK, price=p, size=s) for p, s in asks)
        ev.checksum = truth[n].checksum()
        snaps.append(ev)
    batches: list[list[pb.Event]] = []
    batch: list[pb.Event] = []
    i = k = 0
    total = 0
    while i < len(changes):
        name = names[k % instruments]
        k += 1
        seq[name] += 1
        ev = pb.Event(instrument=name, seq=seq[name], ts=1_700_000_000_000_000 + k)
        if rng.random() < 0.05:
            ev.trade.CopyFrom(pb.Trade(price=MID, size=1, aggressor=BID))
        else:
            take = changes[i : i + rng.randint(1, 4)]
            i += len(take)
            total += len(take)
            ev.update.changes.extend(pb.Level(side=sd, price=p, size=s) for sd, p, s in take)
            truth[name].apply(take)
        batch.append(ev)
        if len(batch) == per_batch:
            _checksum_last(batch, truth)
            batches.append(batch)
            batch = []
    if batch:
        _checksum_last(batch, truth)
        batches.append(batch)
    return snaps, batches, total


def _checksum_last(batch: list[pb.Event], truth: dict[str, OrderBook]) -> None:
    seen: set[str] = set()
    for ev in reversed(batch):
        if ev.instrument not in seen:
            seen.add(ev.instrument)
            ev.checksum = truth[ev.instrument].checksum()


def bench_apply_batch(snaps: list[pb.Event], batches: list[list[pb.Event]], repeats: int) -> Times:
    times = Times()
    names = [ev.instrument for ev in snaps]
    for _ in range(repeats):
        books = Books(names)
        books.apply_batch(snaps)  # not timed: 1,000-level snapshots are not the steady state

        def run() -> None:
            for batch in batches:
                books.apply_batch(batch)  # noqa: B023 (called at once)

        times.run(run)
        assert all(books.is_ready(n) for n in names)
    return times


def bench_pb_reads(batches: list[list[pb.Event]], repeats: int) -> Times:
    """Only read the fields apply_batch reads, and apply nothing: the protobuf floor."""
    times = Times()

    def run() -> None:
        for batch in batches:
            for ev in batch:
                ev.instrument, ev.seq, ev.ts, ev.HasField("checksum")
                if ev.WhichOneof("body") == "update":
                    for lv in ev.update.changes:
                        lv.side, lv.price, lv.size

    for _ in range(repeats):
        times.run(run)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n = 20_000 if args.quick else 200_000
    repeats = 3 if args.quick else args.repeats

    print(f"# bench_book: Python {platform.python_version()} on {platform.machine()}, {n:,} changes, median of {repeats}")
    print(f"# load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; figures are wall [CPU]")
    print(reference_line())
    changes, mix = change_stream(random.Random(42), n)
    print("mix: " + ", ".join(f"{k} {v / n:.0%}" for k, v in mix.items()))

    for name, (wall, cpu) in bench_apply(changes, repeats).items():
        print(f"apply  {name:34s} {wall / 1e6:5.2f} [{cpu / 1e6:5.2f}] M changes/s")

    bids, asks = initial_levels(random.Random(0))
    book = fresh_book(bids, asks)
    book.apply(changes)
    print(f"book after the stream: {book.depth(BID)} bids, {book.depth(ASK)} asks")
    calls = 2_000 if args.quick else 10_000
    for label, fn in [
        ("top-25 read, one side (bids(25))", lambda: book.bids(25)),
        ("top-25 read, both sides", lambda: (book.bids(25), book.asks(25))),
        ("checksum (best 10 a side)", book.checksum),
        ("best bid + best ask", lambda: (book.best_bid, book.best_ask)),
    ]:
        wall, cpu = per_call_us(fn, calls, repeats)
        print(f"{label:34s} {wall:6.2f} [{cpu:6.2f}] us")

    snaps, batches, total = pb_batches(changes[: n // 3], instruments=4, per_batch=100, rng=random.Random(7))
    events = sum(len(b) for b in batches)
    times = bench_apply_batch(snaps, batches, repeats)
    (ev_wall, ev_cpu), (ch_wall, ch_cpu) = times.rate(events), times.rate(total)
    print(f"Books.apply_batch: {events:,} pb events in batches of 100, 4 instruments, {total / events:.1f} changes/event")
    print(f"  {ev_wall / 1e3:5.0f}k [{ev_cpu / 1e3:5.0f}k] events/s = {ch_wall / 1e6:5.2f} [{ch_cpu / 1e6:5.2f}] M changes/s")
    wall, cpu = bench_pb_reads(batches, repeats).rate(events)
    print(f"  reading the same protobuf fields alone: {wall / 1e3:5.0f}k [{cpu / 1e3:5.0f}k] events/s")
    print(f"# load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
