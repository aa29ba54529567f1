"""What the bridge's verification costs per book, and per delivery once fanned out.

Run: .venv/bin/python bench/bench_verify.py   (a few seconds; --quick for a smoke run)

The bridge checks each book once per message, never per socket (bridge/verify.py:
decode, instrument, checksum of the levels in ticks and lots), then orders it and frames
it once (bridge/fanout.py). This times, per book, at depth 10 and 25 (BTC-USD, as the
ingestor encodes it): the whole check, its two parts (schema.decode; the checksum of the
decoded levels), the cheap peek the bridge did before (schema.peek_order), and the
fanout's whole per-book path with no socket attached. The cost per delivery at N sockets
is the cost per book divided by N. Figures are medians of wall [CPU] time, as in
bench/bench_book.py, with the reference loop of bench/machine.py to compare machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_book import Times, per_call_us  # noqa: E402
from bench.machine import reference_line  # noqa: E402
from bridge.fanout import Fanout  # noqa: E402
from bridge.metrics import Stats  # noqa: E402
from bridge.topic import Topic  # noqa: E402
from bridge.verify import verify_book  # noqa: E402
from marketdata import schema  # noqa: E402
from marketdata.book import OrderBook  # noqa: E402
from marketdata.instruments import Instrument, select  # noqa: E402

EPOCH = 1_764_000_000_000_000
SOCKETS = 1_000


def book_payload(inst: Instrument, depth: int, seq: int, rng: random.Random) -> bytes:
    """A book as the ingestor publishes it: `depth` levels a side around the reference price."""
    mid = inst.reference_ticks
    book = OrderBook(inst.id, epoch=EPOCH)
    book.reset(
        seq,
        [(mid - 1 - i - rng.randint(0, 2), rng.randint(1, 50_000)) for i in range(0, depth * 3, 3)],
        [(mid + 1 + i + rng.randint(0, 2), rng.randint(1, 50_000)) for i in range(0, depth * 3, 3)],
    )
    return schema.encode_book(inst, book, depth, ts=1_764_000_000_000_000 + seq, pts=1_764_000_000_000_100 + seq, checksum=book.checksum())


class Listed:
    """The bus as the fanout sees it, for one instrument; no check ever runs (books are in order)."""

    def __init__(self, inst: Instrument) -> None:
        self.inst = inst

    def instrument(self, instrument_id: str) -> Instrument | None:
        return self.inst if instrument_id == self.inst.id else None

    async def last_value(self, channel: bytes) -> bytes | None:
        raise AssertionError("no check expected: books arrive in order")

    def books_flowing(self) -> None:
        pass


def fanout_path(inst: Instrument, depth: int, calls: int, repeats: int, rng: random.Random) -> tuple[float, float]:
    """Fanout.deliver per book (verify, order, frame), in order, no socket attached; a fresh topic each repeat."""
    loop = asyncio.new_event_loop()  # not run: the in-order path only reads loop.time()
    try:
        channel = f"md:book:{inst.id}".encode()
        payloads = [book_payload(inst, depth, seq, rng) for seq in range(calls + 1)]
        times = Times()
        for _ in range(repeats):
            topics = {channel: Topic(channel, False, inst.id, primed=True)}
            fanout = Fanout(topics, Stats(), loop, Listed(inst))
            fanout.fetched_book(channel, payloads[0])
            deliver = fanout.deliver

            def run(deliver: Callable[[bytes, bytes], None] = deliver) -> None:
                for payload in payloads[1:]:
                    deliver(channel, payload)

            times.run(run)
            assert topics[channel].latest is not None and topics[channel].latest.seq == calls, "a book was not taken"
        return times.each_us(calls)
    finally:
        loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    calls = 2_000 if args.quick else 20_000
    repeats = 3 if args.quick else args.repeats
    (inst,) = select(["BTC-USD"])
    rng = random.Random(3)

    print(f"# bench_verify: Python {platform.python_version()} on {platform.machine()}, {calls:,} calls, median of {repeats}")
    print(f"# load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; figures are wall [CPU] µs")
    print(reference_line())
    for depth in (10, 25):
        payload = book_payload(inst, depth, 1, rng)
        msg = schema.decode(payload)
        rows = [
            ("verify_book (the whole check)", lambda p=payload: verify_book(p, inst.id, inst)),
            ("  schema.decode", lambda p=payload: schema.decode(p)),
            ("  schema.book_checksum (decoded)", lambda m=msg: schema.book_checksum(m, inst)),
            ("schema.peek_order (the old peek)", lambda p=payload: schema.peek_order(p)),
        ]
        print(f"depth {depth}: {len(payload)} bytes")
        whole = (0.0, 0.0)
        for label, fn in rows:
            wall, cpu = per_call_us(fn, calls, repeats)
            print(f"  {label:36s} {wall:6.2f} [{cpu:6.2f}] µs per book")
            if label.startswith("verify_book"):
                whole = (wall, cpu)
        wall, cpu = fanout_path(inst, depth, calls, repeats, rng)
        print(f"  {'Fanout.deliver, no socket':36s} {wall:6.2f} [{cpu:6.2f}] µs per book")
        print(f"  verification per delivery at {SOCKETS:,} sockets: {whole[0] / SOCKETS * 1000:.1f} [{whole[1] / SOCKETS * 1000:.1f}] ns")
    print(f"# load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
