"""`marketdata client`: live books straight from the simulator, rebuilt and verified.

The client lists the simulator's instruments, subscribes, and applies every
EventBatch through `feed.Books`, which checks each sequence number and every
checksum the exchange sends. A gap or a checksum mismatch means the exchange
and this client disagree: that is a bug, so the client stops with one line.

What an *update* is: one instrument whose book changed in one applied EventBatch.
The simulator puts the book's checksum on the last event of each instrument in
each batch, so every update is a book state proven equal to the exchange's.
`--json` prints one line per update, with the book's epoch and seq; `--count N`
stops after N updates. A snapshot of a new epoch (the simulator's books started
afresh) replaces its book at once, as `feed.Books` does for every consumer.

The hot path only applies events. The ladder (marketdata.client.ladder) is drawn on a
timer, at most 10 times a second, from the books as they are between two
batches, so drawing never slows the stream and never shows a half-applied batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from typing import IO

# gRPC's C core reads this when first imported; without it, it prints INFO lines of its
# own (GOAWAY received and the like) over the user's terminal.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
import orjson
from rich.console import Console, RenderableType
from rich.live import Live

from marketdata.client.ladder import (
    BookView,
    fit_depth,
    mid_text,
    render_books,
    spread_bps,
)
from marketdata.errors import BookError, MarketDataError, StreamEnded, UnknownInstrument
from marketdata.feed import Books, listed_instruments
from marketdata.instruments import Instrument
from marketdata.settings import ClientSettings
from marketdata.v1 import market_data_pb2 as pb
from marketdata.v1 import market_data_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to wait for ListInstruments
FRAME_INTERVAL = 0.1  # seconds between two ladder frames: at most 10 a second
RATE_WINDOW = 1.0  # seconds over which events/s is measured
_GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


class SimUnreachable(MarketDataError):
    """The simulator did not answer, or the stream from it broke."""


class NotListed(UnknownInstrument):
    """An instrument asked for on the command line that the simulator does not list."""

    def __init__(self, instrument: str, sim: str, listed: Sequence[str]) -> None:
        super().__init__(instrument)
        self.args = (f"unknown instrument {instrument!r}: the simulator at {sim} lists {', '.join(listed) or 'nothing'}",)


class Disagreement(MarketDataError):
    """The rebuilt book differs from the exchange's (gap or checksum): a bug, not bad luck."""


# -- the hot path --------------------------------------------------------------------------


class Consumer:
    """The client's books: applies batches through feed.Books and remembers what was verified."""

    __slots__ = ("instruments", "books", "verified", "epoch", "events", "batches", "_apply")

    def __init__(self, instruments: Iterable[Instrument]) -> None:
        self.instruments: dict[str, Instrument] = {i.id: i for i in instruments}
        self.books = Books(self.instruments)
        # instrument -> (epoch, seq) at which the exchange's checksum last matched
        self.verified: dict[str, tuple[int, int]] = {}
        self.epoch: int | None = None  # the simulator's, from its last snapshot
        self.events = 0
        self.batches = 0
        self._apply = self.books.apply

    def apply(self, events: Sequence[pb.Event]) -> dict[str, pb.Event]:
        """Apply one batch; return the updates: instrument -> its last event in the batch.

        Raises Disagreement on a gap or checksum mismatch. Books still waiting for
        their snapshot are left out.
        """
        apply = self._apply
        last: dict[str, pb.Event] = {}
        try:
            for event in events:
                apply(event)
                last[event.instrument] = event
        except BookError as exc:
            raise Disagreement(f"{exc}; the exchange and this client disagree, which is a bug") from exc
        except UnknownInstrument as exc:
            raise Disagreement(f"the simulator sent {exc.instrument!r}, which this client did not subscribe to") from exc
        self.events += len(events)
        self.batches += 1
        if self.books.epoch != self.epoch:
            if self.epoch is not None:
                log.info("simulator epoch changed: %d -> %d; books replaced by its snapshots", self.epoch, self.books.epoch)
            self.epoch = self.books.epoch
        is_ready, verified, books = self.books.is_ready, self.verified, self.books.books
        for name, event in list(last.items()):
            if not is_ready(name):
                del last[name]
            elif event.HasField("checksum"):
                verified[name] = (books[name].epoch, event.seq)
        return last

    def line(self, name: str, event: pb.Event) -> bytes:
        """The JSON line of one update (newline included)."""
        inst = self.instruments[name]
        book = self.books.books[name]
        bid, ask = book.best_bid, book.best_ask
        record: dict[str, object] = {
            "instrument": name,
            "epoch": book.epoch,
            "seq": event.seq,
            "ts": event.ts,
            "bid": inst.price(bid[0]) if bid else None,
            "bid_size": inst.size(bid[1]) if bid else None,
            "ask": inst.price(ask[0]) if ask else None,
            "ask_size": inst.size(ask[1]) if ask else None,
            "spread": None,
            "spread_bps": None,
            "mid": None,
            "checksum": event.checksum if event.HasField("checksum") else book.checksum(),
            "verified": self.verified.get(name) == (book.epoch, event.seq),
        }
        if bid and ask:
            record["spread"] = inst.price(ask[0] - bid[0])
            record["spread_bps"] = round(spread_bps(bid[0], ask[0]), 4)
            record["mid"] = float(mid_text(inst, bid[0], ask[0]))
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)

    def view(self, name: str, depth: int, rate: float | None) -> BookView:
        """What the ladder shows of one book right now."""
        inst = self.instruments[name]
        if not self.books.is_ready(name):
            return BookView(inst, None)
        book = self.books.books[name]
        return BookView(
            inst, book.seq, tuple(book.bids(depth)), tuple(book.asks(depth)),
            self.verified.get(name) == (book.epoch, book.seq), rate,
        )  # fmt: skip


class Rates:
    """Events/s per instrument from how far its seq moved (seq counts the exchange's events)."""

    def __init__(self) -> None:
        self._start: dict[str, tuple[float, int, int]] = {}
        self.rates: dict[str, float] = {}

    def observe(self, name: str, seq: int, now: float, epoch: int = 0) -> float | None:
        """The rate once a window has passed; a new epoch (or a seq gone back) starts a new window."""
        start = self._start.get(name)
        if start is None or seq < start[1] or epoch != start[2]:
            self._start[name] = (now, seq, epoch)
        elif now - start[0] >= RATE_WINDOW:
            self.rates[name] = (seq - start[1]) / (now - start[0])
            self._start[name] = (now, seq, epoch)
        return self.rates.get(name)


# -- connecting ----------------------------------------------------------------------------


def choose(listed: Iterable[pb.Instrument], wanted: Sequence[str], sim: str) -> list[Instrument]:
    """The simulator's instruments, restricted to `wanted` in the order given (all when empty)."""
    by_id = listed_instruments(listed)
    for name in wanted:
        if name not in by_id:
            raise NotListed(name, sim, list(by_id))
    return [by_id[name] for name in dict.fromkeys(wanted)] if wanted else list(by_id.values())


def _reason(details: str) -> str:
    low = details.lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("dns resolution failed", "cannot resolve the host name"),
        ("name or service not known", "cannot resolve the host name"),
        ("lookup", "cannot resolve the host name"),
        ("connection reset", "connection reset"),
        ("socket closed", "connection closed"),
        ("deadline", "timed out"),
        ("timeout", "timed out"),
    ):
        if needle in low:
            return reason
    return details.strip().splitlines()[0][:120] if details.strip() else "unavailable"


def _rpc_error(exc: grpc.aio.AioRpcError, sim: str, connected: bool) -> MarketDataError:
    """One user-facing error for a failed call: unreachable, lost, unknown instrument or refused."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not connected:
        return SimUnreachable(f"cannot reach simulator at {sim} (no answer within {CONNECT_TIMEOUT:g} s); is `marketdata sim` running?")
    if code == grpc.StatusCode.UNAVAILABLE:
        if not connected:
            return SimUnreachable(f"cannot reach simulator at {sim} ({_reason(details)}); is `marketdata sim` running?")
        return SimUnreachable(f"lost the simulator at {sim} ({_reason(details)})")
    if code == grpc.StatusCode.NOT_FOUND:
        return MarketDataError(f"the simulator at {sim} says: {details}")
    return MarketDataError(f"the simulator at {sim} failed the call: {code.name}: {details}")


# -- the two outputs -----------------------------------------------------------------------


async def _json_lines(call: grpc.aio.UnaryStreamCall, consumer: Consumer, count: int, out: IO[bytes]) -> None:
    """Write one JSON line per update, flushed batch by batch, until `count` updates (0: forever)."""
    read, apply, line = call.read, consumer.apply, consumer.line
    write, flush = out.write, out.flush
    left = count or -1
    while True:
        batch = await read()
        if batch is grpc.aio.EOF:
            raise StreamEnded
        updates = apply(batch.events)
        if not updates:
            continue
        lines = [line(name, event) for name, event in updates.items()]
        if 0 < left <= len(lines):
            write(b"".join(lines[:left]))
            flush()
            return
        left -= len(lines)
        write(b"".join(lines))
        flush()


async def _ladder(call: grpc.aio.UnaryStreamCall, consumer: Consumer, settings: ClientSettings, console: Console) -> None:
    """Show the ladders live until `count` updates (0: forever); the last frame stays on screen."""
    names = list(consumer.instruments)
    rates = Rates()
    books = consumer.books

    def observe() -> None:
        now = time.monotonic()
        for name in names:
            if books.is_ready(name):
                book = books.books[name]
                rates.observe(name, book.seq, now, book.epoch)

    def frame(fit: bool) -> RenderableType:
        depth = fit_depth(len(names), console.width, console.height, settings.depth) if fit else settings.depth
        return render_books([consumer.view(name, depth, rates.rates.get(name)) for name in names], depth)

    async def tick(live: Live) -> None:
        # A file or a pipe gets only the last frame, so only the rates are kept up to date for it.
        draw = console.is_terminal
        while True:
            await asyncio.sleep(FRAME_INTERVAL)
            observe()
            if draw:
                live.update(frame(fit=True), refresh=True)

    live = Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
    with live:
        painter = asyncio.create_task(tick(live), name="client-ladder")
        try:
            read, apply = call.read, consumer.apply
            left = settings.count or -1
            while left:
                batch = await read()
                if batch is grpc.aio.EOF:
                    raise StreamEnded
                n = len(apply(batch.events))
                left = max(0, left - n) if left > 0 else left
        finally:
            painter.cancel()
            (outcome,) = await asyncio.gather(painter, return_exceptions=True)
            live.update(frame(fit=console.is_terminal))
        if isinstance(outcome, Exception):
            raise outcome  # drawing failed: a bug, shown with its traceback


# -- the entry -----------------------------------------------------------------------------


async def stream(settings: ClientSettings, out: IO[bytes] | None = None, console: Console | None = None) -> None:
    """Connect, subscribe and print until `settings.count` updates (forever when 0)."""
    sim = settings.sim
    async with grpc.aio.insecure_channel(sim, options=_GRPC_OPTIONS) as channel:
        stub = pb_grpc.MarketDataStub(channel)
        try:
            listed = await stub.ListInstruments(pb.ListInstrumentsRequest(), timeout=CONNECT_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc, sim, connected=False) from None
        instruments = choose(listed.instruments, settings.instruments, sim)
        consumer = Consumer(instruments)
        log.info("connected to simulator %s, streaming %s", sim, ", ".join(i.id for i in instruments))
        call = stub.Subscribe(pb.SubscribeRequest(instruments=[i.id for i in instruments]))
        try:
            if settings.json:
                await _json_lines(call, consumer, settings.count, out or sys.stdout.buffer)
            else:
                await _ladder(call, consumer, settings, console or Console())
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc, sim, connected=True) from None
        except StreamEnded:
            raise SimUnreachable(f"the simulator at {sim} ended the stream (was it stopped?)") from None
        finally:
            call.cancel()
        log.debug("stopped after %d events in %d batches", consumer.events, consumer.batches)


def run(settings: ClientSettings) -> int:
    """The `marketdata client` entry: 0 when --count updates were shown, 130 on Ctrl-C, 143 on SIGTERM.

    Expected failures (unreachable simulator, unknown instrument, a book that
    disagrees with the exchange's) are raised as MarketDataError for the CLI to print.
    """

    async def main() -> int:
        task = asyncio.create_task(stream(settings))
        stopped_by: list[int] = []
        loop = asyncio.get_running_loop()

        def stop(code: int) -> None:
            stopped_by.append(code)
            task.cancel()

        loop.add_signal_handler(signal.SIGINT, stop, 130)
        loop.add_signal_handler(signal.SIGTERM, stop, 143)
        try:
            await asyncio.wait([task])
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
        if task.cancelled():
            return stopped_by[0] if stopped_by else 130
        task.result()
        return 0

    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(main())
        return uvloop.run(main())
    except BrokenPipeError:
        # The reader went away (`| head`): a normal end for a filter. Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
