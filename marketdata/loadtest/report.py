"""What `marketdata loadtest` shows: live progress while it runs, a summary at the end.

Progress goes to stderr (a rich live panel on a terminal, a plain line every two
seconds otherwise, nothing with --json); the summary table goes to stdout.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from marketdata.loadtest import latency
from marketdata.loadtest.measurement import Plan, Result, Totals


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _mb(x: float) -> str:
    return f"{x / 1e6:,.1f} MB/s"


class RecentRates:
    """Messages/s and CPU share over each worker's last report interval, summed over the workers.

    Workers report on their own clocks, so the interval between two looks at the totals
    holds one, two or three reports: rates come from each worker's own window and
    counters, never from when the parent happened to look.
    """

    def __init__(self, processes: int) -> None:
        self.processes = max(1, processes)
        self._marks: dict[int, tuple[float, int, float]] = {}
        self._rates: dict[int, tuple[float, float]] = {}  # worker -> (msgs/s, share of a core)

    def update(self, totals: Totals) -> tuple[float, float]:
        """(msgs/s, share of the load generator's cores) as of the workers' latest reports."""
        for worker, (window, books, cpu) in totals.marks.items():
            prev = self._marks.get(worker)
            if prev is not None and window <= prev[0]:
                continue  # no new report from this worker: keep its last rate
            if prev is not None:
                span = window - prev[0]
                self._rates[worker] = ((books - prev[1]) / span, (cpu - prev[2]) / span)
            self._marks[worker] = (window, books, cpu)
        rate = sum(r for r, _ in self._rates.values())
        share = sum(c for _, c in self._rates.values()) / self.processes
        return rate, share


class LiveView:
    """Live progress of one load test; a context manager around `update`."""

    def __init__(self, plan: Plan, quiet: bool = False) -> None:
        self.plan = plan
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.live: Live | None = None
        self.processes = plan.processes or os.cpu_count() or 1
        self._recent = RecentRates(self.processes)
        self._prev_hist = latency.new()
        self._printed = 0.0

    def __enter__(self) -> LiveView:
        if self.quiet:
            return self
        p = self.plan
        path = {"single": "/ws/market_data/{id}", "multi": "/ws", "socketio": "socket.io"}[p.protocol]
        self.console.print(
            f"[bold]marketdata loadtest[/]: {p.clients:,} clients ({p.protocol}, {path}{', deltas' if p.deltas else ''}) over {len(p.instruments)} "
            f"instrument(s) at {', '.join(p.urls)}; {p.warmup:g} s warm-up, then {p.duration:g} s measured"
        )
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    def update(self, phase: str, totals: Totals, elapsed: float) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        rate, share = self._recent.update(totals)
        recent = latency.subtract(totals.hist_ts, self._prev_hist)
        p50, p99 = latency.percentile(recent, 0.5) / 1000, latency.percentile(recent, 0.99) / 1000
        self._prev_hist = list(totals.hist_ts)
        total = {"warm-up": self.plan.warmup, "measuring": self.plan.duration}.get(phase)
        clock = f"{elapsed:4.1f} / {total:g} s" if total else f"{elapsed:4.1f} s"
        if self.live is not None:
            self.live.update(self._panel(phase, clock, totals, rate, p50, p99, share))
        elif now - self._printed >= 2.0:
            self._printed = now
            self.console.print(
                f"{phase} {clock}: {totals.open:,}/{self.plan.clients:,} open, {_n(rate)} msgs/s, "
                f"p50 {p50:.1f} ms p99 {p99:.1f} ms, {totals.regressions} regressions, load generator at "
                f"{share:.0%} of its cores", highlight=False)

    def _panel(self, phase: str, clock: str, t: Totals, rate: float, p50: float, p99: float, share: float) -> Table:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row("phase", f"{phase}  {clock}")
        grid.add_row("sockets", f"{t.open:,} open of {self.plan.clients:,}  ({t.connect_failures:,} failed to connect"
                                f", {sum(t.closed.values()):,} closed by the server)")
        grid.add_row("delivered", f"{_n(rate)} msgs/s   ({t.books:,} messages so far)")
        grid.add_row("latency (ts)", f"p50 {p50:.1f} ms   p99 {p99:.1f} ms   (last half second)")
        style = "red" if t.regressions else "green"
        grid.add_row("sequence", f"[{style}]{t.regressions:,} regressions[/]   {t.conflated:,} seqs conflated")
        grid.add_row("load generator", f"{share:.0%} of its {self.processes} cores")
        return grid


def print_summary(result: Result, console: Console | None = None) -> None:
    console = console or Console()
    t, p = result.totals, result.plan
    ts, pts = result.latency_ts, result.latency_pts
    table = Table(title=f"marketdata loadtest: {t.window:.1f} s measured", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("clients", f"{t.connected:,} connected of {p.clients:,} ({p.protocol}), {t.connect_failures:,} "
                             f"failed to connect, {sum(t.closed.values()):,} closed by the server, {t.open:,} open at the end")
    table.add_row("delivered", f"{_n(t.rate)} msgs/s   {_mb(t.byte_rate)}   ({t.books:,} book messages, "
                               f"{t.others:,} others)")
    for name, s in (("latency from ts", ts), ("latency from pts", pts)):
        table.add_row(name, f"p50 {s.p50:.2f} ms   p90 {s.p90:.2f} ms   p99 {s.p99:.2f} ms   max {s.max:.2f} ms")
    if t.per_client:
        counts = sorted(t.per_client)
        table.add_row("per client", f"min {counts[0]:,}   median {counts[len(counts) // 2]:,}   max {counts[-1]:,} messages")
    style = "red" if t.regressions else "green"
    table.add_row("sequence", f"[{style}]{t.regressions:,} regressions (errors)[/]   {t.conflated:,} seqs skipped "
                              "(conflated by design, not loss)")
    if p.deltas:
        style = "red" if t.checksum_failures else "green"
        table.add_row("deltas", f"{t.deltas:,} deltas and {t.books - t.deltas:,} snapshots, "
                                f"{t.bytes / t.books if t.books else 0:,.0f} bytes a message   {t.resyncs:,} resyncs "
                                f"({t.gaps:,} gaps)   [{style}]{t.checksum_failures:,} checksum failures[/] "
                                f"({t.verifying:,} clients verifying)")
    table.add_row("errors", f"{t.errors:,} error messages, {t.stale_notices:,} feed-stale notices")
    table.add_row("load generator", f"{result.processes} processes, {result.cpu_us_per_message:.1f} µs CPU per message, "
                                    f"busiest at {t.busiest_cpu:.0%} of a core; ceiling ≈ {_n(result.ceiling)} msgs/s "
                                    "with a core per process")
    console.print(table)
    if result.saturated:
        console.print("[yellow]the load generator was saturated (a process near 100 % of a core): the server may "
                      "deliver more than measured[/]")
    if result.files_note:
        console.print(result.files_note, highlight=False)
    for reason, n in sorted(t.failure_reasons.items(), key=lambda kv: -kv[1])[:3]:
        console.print(f"connect failures: {n:,} x {reason}", highlight=False)
    for reason, n in sorted(t.closed.items(), key=lambda kv: -kv[1])[:3]:
        console.print(f"closed by the server: {n:,} x {reason}", highlight=False)
    for sample in t.error_samples:
        console.print(f"error: {sample}", highlight=False)
