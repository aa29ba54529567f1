"""The load generator's worker process: many WebSocket clients, read and tallied.

`marketdata loadtest` (marketdata.loadtest.runner) starts one worker per core; each opens
its share of the sockets with picows, reads every frame and keeps counters and two
latency histograms, which it reports to the parent over a pipe. The per-frame path
is written to cost about two microseconds: one bounded regex over the frame's
memory finds instrument, seq, ts and pts without decoding the book.

Three protocols, one per kind of server measured:

- ``single``: ``/ws/market_data/{id}``, books arrive unasked (the bridge, the peers).
- ``multi``: the bridge's multiplexed ``/ws``; the client subscribes on connect.
- ``socketio``: a raw Engine.IO v4 / Socket.IO v5 WebSocket (no polling, no client
  library: the python-socketio client costs several times more per message); the
  client joins the instrument's room with ``42["subscribe","ID"]``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson
from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from marketdata.loadtest import latency
from marketdata.loadtest.measurement import Report

log = logging.getLogger(__name__)

PROTOCOLS = ("single", "multi", "socketio")
STALLED_RCVBUF = 4096  # a client that stops reading lets the server fill a small window fast

# Every book carries these fields first and in this order (schema.encode_book); JSON
# re-encoded by a peer keeps the order. Searched within the first bytes of a frame.
_BOOK = re.compile(rb'"type":"book","instrument":"([^"]*)","seq":(\d+),"ts":(\d+),"pts":(\d+)')
_HEAD = 320
_TEXT = WSMsgType.TEXT
_CLOSE = WSMsgType.CLOSE
_MAX_US = latency.MAX_US


@dataclass(frozen=True, slots=True)
class Target:
    """One socket to open: the URL and the instrument it is for."""

    url: str
    instrument: str


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    index: int
    protocol: str
    targets: tuple[Target, ...]
    stalled: int = 0  # this many of the sockets stop reading after their first book
    connect_concurrency: int = 64
    connect_timeout: float = 10.0
    report_every: float = 0.5


class Tally:
    """The mutable counters one worker's sockets share (a single event loop: no locks)."""

    __slots__ = ("books", "others", "bytes", "regressions", "conflated", "errors", "error_samples",
                 "stale_notices", "hist_ts", "hist_pts", "max_ts", "max_pts", "closed", "open")

    def __init__(self) -> None:
        self.closed: Counter[str] = Counter()
        self.open = 0
        self.books = self.others = self.bytes = 0
        self.regressions = self.conflated = self.errors = self.stale_notices = 0
        self.error_samples: list[str] = []
        self.hist_ts = latency.new()
        self.hist_pts = latency.new()
        self.max_ts = self.max_pts = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what[:200])


class Client(WSListener):
    """One socket: counts books, checks their seq, files their latency."""

    __slots__ = ("tally", "instrument", "protocol", "last", "count", "stall", "transport", "closing")

    def __init__(self, tally: Tally, instrument: str, protocol: str, stall: bool) -> None:
        self.tally = tally
        self.instrument = instrument.encode()
        self.protocol = protocol
        self.last = -1
        self.count = 0
        self.stall = stall
        self.transport: WSTransport | None = None
        self.closing = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.tally.open += 1
        if self.protocol == "multi":
            request = {"op": "subscribe", "instruments": [self.instrument.decode()], "trades": False}
            transport.send(_TEXT, orjson.dumps(request))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.tally.open -= 1
        if not self.closing and not transport.close_handshake:
            self.tally.closed["dropped without a close frame"] += 1

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        m = _BOOK.search(frame.get_payload_as_memoryview(), 0, _HEAD)
        if m is None:  # rare: looked at more closely, off the hot path
            if frame.msg_type is _TEXT:
                self._other(transport, frame.get_payload_as_bytes())
            else:
                self._control_frame(transport, frame)
            return
        now = time.time_ns() // 1000
        t = self.tally
        name, seq, ts, pts = m.groups()
        seq = int(seq)
        t.books += 1
        t.bytes += frame.payload_size
        self.count += 1
        if name != self.instrument:
            t.error(f"book of {name.decode()} on a socket for {self.instrument.decode()}")
        last = self.last
        if seq > last:
            if last >= 0:
                t.conflated += seq - last - 1
        else:
            t.regressions += 1
        self.last = seq
        # latency.bucket() inlined, for ts then pts: two calls would add ~50 ns to this ~2 µs
        # per-message path. tests/unit/test_generator.py checks both copies against bucket().
        d = now - int(ts)
        if d > t.max_ts:
            t.max_ts = d
        if d < 64:
            i = d if d > 0 else 0
        else:
            if d > _MAX_US:
                d = _MAX_US
            s = d.bit_length() - 6
            i = (s << 5) + (d >> s)
        t.hist_ts[i] += 1
        d = now - int(pts)
        if d > t.max_pts:
            t.max_pts = d
        if d < 64:
            i = d if d > 0 else 0
        else:
            if d > _MAX_US:
                d = _MAX_US
            s = d.bit_length() - 6
            i = (s << 5) + (d >> s)
        t.hist_pts[i] += 1
        if self.stall:
            transport.underlying_transport.pause_reading()

    def _other(self, transport: WSTransport, data: bytes) -> None:
        """Anything but a book: the feed state, protocol answers, Engine.IO packets."""
        t = self.tally
        t.others += 1
        t.bytes += len(data)
        if self.protocol == "socketio":
            self._engineio(transport, data)
            return
        try:
            msg = orjson.loads(data)
            kind = msg.get("type")
        except (orjson.JSONDecodeError, AttributeError):
            t.error(f"not a JSON object: {data[:80]!r}")
            return
        if kind == "feed":
            if not msg.get("live"):
                t.stale_notices += 1
        elif kind == "error":
            t.error(f"{msg.get('error')}: {msg.get('message')}")
        elif kind == "book":
            t.error(f"book without instrument/seq/ts/pts in that order: {data[:120]!r}")
        elif kind not in ("subscribed", "unsubscribed", "pong", "trade"):
            t.error(f"unknown message type {kind!r}")

    def _engineio(self, transport: WSTransport, data: bytes) -> None:
        if data == b"2":  # Engine.IO ping: answer or be dropped
            transport.send(_TEXT, b"3")
        elif data.startswith(b"0{"):  # Engine.IO open: connect to the default namespace
            transport.send(_TEXT, b"40")
        elif data.startswith(b"40"):  # namespace joined: ask for the instrument's room
            transport.send(_TEXT, b'42["subscribe",' + orjson.dumps(self.instrument.decode()) + b"]")
        elif data.startswith(b"44"):
            self.tally.error(f"socket.io connect error: {data[:120]!r}")

    def _control_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is _CLOSE:
            if not self.closing:
                code = frame.get_close_code()
                code_n = code.value if isinstance(code, WSCloseCode) else int(code)
                self.tally.closed[f"{code_n} {frame.get_close_reason()}".strip()] += 1
                self.closing = True
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.closing = True
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


def _stalled_socket(_url: Any) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.setblocking(False)
    return sock


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:160] if text else type(exc).__name__


class Worker:
    """Opens the plan's sockets, then reports every `report_every` s until told to stop."""

    def __init__(self, plan: WorkerPlan, conn: Connection) -> None:
        self.plan = plan
        self.conn = conn
        self.tally = Tally()
        self.clients: list[Client] = []
        self.failures: Counter[str] = Counter()
        self.attempted = 0
        self.base: Report | None = None  # the counters when the parent said "reset"
        self.started = time.monotonic()
        self.phase = "connecting"
        self.stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._on_command)
        reporter = asyncio.create_task(self._report_loop())
        try:
            await self._connect_all()
            self.phase = "ready"
            self._send(self.report())
            self.phase = "running"
            await self.stop.wait()
        finally:
            loop.remove_reader(self.conn.fileno())
            reporter.cancel()
        final = self.report() if self.base is None else _since(self.report(), self.base)
        final.phase = "final"
        final.per_client = [c.count for c in self.clients if not c.stall]
        self._send(final)
        for client in self.clients:
            client.close()
        await asyncio.sleep(0.05)  # let the close frames leave

    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(self.plan.connect_concurrency)
        stalled = self.plan.stalled

        async def one(n: int, target: Target) -> None:
            async with gate:
                if self.stop.is_set():
                    return
                self.attempted += 1
                stall = n < stalled
                client = Client(self.tally, target.instrument, self.plan.protocol, stall)
                try:
                    await asyncio.wait_for(
                        ws_connect(lambda: client, target.url, websocket_handshake_timeout=self.plan.connect_timeout,
                                   socket_factory=_stalled_socket if stall else None, max_frame_size=1 << 20),
                        self.plan.connect_timeout + 1,
                    )
                except (OSError, asyncio.TimeoutError, EOFError, ValueError, WSError) as exc:
                    # WSHandshakeError (a WSError): the upgrade was refused (403, 404, ...).
                    self.failures[_reason(exc)] += 1
                    return
                self.clients.append(client)

        await asyncio.gather(*(one(n, t) for n, t in enumerate(self.plan.targets)))

    def _on_command(self) -> None:
        while self.conn.poll():
            try:
                command = self.conn.recv()
            except EOFError:  # the parent is gone
                self.stop.set()
                return
            if command == "reset":
                # Counters stay cumulative (live reports never go backwards); the final
                # report is the difference from this baseline. Maxima restart here.
                self.base = self.report()
                self.tally.max_ts = self.tally.max_pts = 0
            elif command == "stop":
                self.stop.set()

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.plan.report_every)
            self._send(self.report())

    def _send(self, report: Report) -> None:
        try:
            self.conn.send(report)
        except (BrokenPipeError, EOFError, OSError):
            self.stop.set()

    def report(self) -> Report:
        t = self.tally
        return Report(
            worker=self.plan.index, phase=self.phase,
            window=time.monotonic() - self.started, cpu=time.process_time(),
            attempted=self.attempted, connected=len(self.clients), open=t.open,
            connect_failures=sum(self.failures.values()), failure_reasons=dict(self.failures),
            closed=dict(t.closed), books=t.books, others=t.others, bytes=t.bytes,
            regressions=t.regressions, conflated=t.conflated, errors=t.errors,
            error_samples=list(t.error_samples), stale_notices=t.stale_notices,
            hist_ts=list(t.hist_ts), hist_pts=list(t.hist_pts), max_ts=t.max_ts, max_pts=t.max_pts,
        )


def _since(now: Report, base: Report) -> Report:
    """The counts of `now` that came after `base` (socket states and closes stay as in `now`)."""
    for name in ("window", "cpu", "books", "others", "bytes", "regressions", "conflated", "errors", "stale_notices"):
        setattr(now, name, getattr(now, name) - getattr(base, name))
    now.hist_ts = latency.subtract(now.hist_ts, base.hist_ts)
    now.hist_pts = latency.subtract(now.hist_pts, base.hist_pts)
    now.error_samples = now.error_samples[len(base.error_samples):]
    return now


def worker_main(plan: WorkerPlan, conn: Connection) -> None:
    """Entry of a worker process (multiprocessing target): run until the parent says stop."""
    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        await Worker(plan, conn).run()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
    conn.close()
