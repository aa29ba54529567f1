"""The load generator's worker process: many WebSocket clients opened, read and reported.

`marketdata loadtest` (marketdata.loadtest.runner) starts one worker per core; each
opens its share of the sockets with picows, as clients of marketdata.loadtest.generator
(one per socket, sharing one `Tally`), and reports the counters and latency histograms
to the parent over a pipe every half second, and once more, from the parent's reset,
when told to stop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from picows import WSError, ws_connect

from marketdata import schema
from marketdata.delta import Replica
from marketdata.loadtest import latency
from marketdata.loadtest.generator import Client, DeltaClient, Tally
from marketdata.loadtest.measurement import Report

log = logging.getLogger(__name__)

STALLED_RCVBUF = 4096  # a client that stops reading lets the server fill a small window fast


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
    deltas: bool = False  # the sockets ask for deltas (DeltaClient)
    verify_every: int = 1  # with deltas: every Nth socket applies and verifies them (0: none, only their order)
    reference: bytes = b""  # with deltas: the instrument list as the bridge lists it, to verify checksums


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
        listed = schema.decode_instruments(plan.reference) if plan.reference else ()
        self._instruments = {i.id: i for i in listed}

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
                client = self._client(n, target, stall)
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

    def _client(self, n: int, target: Target, stall: bool) -> Client:
        plan = self.plan
        if not plan.deltas:
            return Client(self.tally, target.instrument, plan.protocol, stall)
        inst = self._instruments.get(target.instrument)
        verify = inst is not None and plan.verify_every > 0 and n % plan.verify_every == 0
        self.tally.verifying += verify
        return DeltaClient(self.tally, target.instrument, plan.protocol, stall, Replica(inst) if verify and inst else None)

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
            deltas=t.deltas, resyncs=t.resyncs, gaps=t.gaps, checksum_failures=t.checksum_failures, verifying=t.verifying,
        )


def _since(now: Report, base: Report) -> Report:
    """The counts of `now` that came after `base` (socket states and closes stay as in `now`)."""
    for name in ("window", "cpu", "books", "others", "bytes", "regressions", "conflated", "errors", "stale_notices",
                 "deltas", "resyncs", "gaps", "checksum_failures"):
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
