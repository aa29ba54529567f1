"""What a load test is asked to do and what it saw, as values.

`Plan` is the run asked for; each worker process sends `Report`s of its counters; the
parent adds them up into `Totals`; `Result` is the plan with the final totals and what
follows from them. Pure code: the runner, the workers and the report all import these
values, and none of them imports another to get them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from marketdata.loadtest import latency

# Counters a worker keeps from its start, added up over the workers as they are.
SUMMED = ("attempted", "connected", "open", "connect_failures", "books", "others", "bytes",
          "regressions", "conflated", "errors", "stale_notices", "deltas", "resyncs", "gaps", "checksum_failures",
          "verifying")


@dataclass(frozen=True, slots=True)
class Plan:
    """The run asked for: how many clients, where, for how long."""

    urls: tuple[str, ...]  # base URLs (http, https, ws or wss)
    instruments: tuple[str, ...]
    clients: int
    duration: float
    warmup: float = 1.0
    protocol: str = "single"
    processes: int = 0  # 0: one per core
    stalled: int = 0  # clients that stop reading after their first book (slow-consumer runs)
    deltas: bool = False  # the clients ask for deltas and keep their books as real clients do
    verify_every: int = 1  # with deltas: every Nth client also applies each and verifies its checksum (0: none)


@dataclass(slots=True)
class Counts:
    """The counters a worker reports and the parent adds up."""

    window: float = 0.0  # seconds counted
    cpu: float = 0.0  # CPU seconds used in them
    attempted: int = 0
    connected: int = 0
    open: int = 0
    connect_failures: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    closed: dict[str, int] = field(default_factory=dict)  # "1008 slow consumer" -> sockets
    books: int = 0
    others: int = 0
    bytes: int = 0
    regressions: int = 0
    conflated: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    stale_notices: int = 0
    hist_ts: list[int] = field(default_factory=latency.new)
    hist_pts: list[int] = field(default_factory=latency.new)
    max_ts: int = 0
    max_pts: int = 0
    per_client: list[int] = field(default_factory=list)  # books per reading socket (final report)
    deltas: int = 0  # of the books: deltas (with Plan.deltas)
    resyncs: int = 0  # snapshots asked for again after a gap or a checksum failure
    gaps: int = 0  # deltas that did not start at the book held
    checksum_failures: int = 0  # books or deltas whose levels did not give their checksum (verifying clients)
    verifying: int = 0  # clients that apply and verify deltas


@dataclass(slots=True, kw_only=True)
class Report(Counts):
    """A worker's counters: live reports count from its start, the final one from the reset."""

    worker: int
    phase: str  # connecting, ready, running, final


@dataclass(slots=True)
class Totals(Counts):
    """Every worker's latest report, added up."""

    busiest_cpu: float = 0.0  # the highest share of a core one worker used
    rate: float = 0.0  # books/s: the sum of each worker's books over its own window
    byte_rate: float = 0.0
    marks: dict[int, tuple[float, int, float]] = field(default_factory=dict)  # worker -> (its window, books, cpu)

    @classmethod
    def of(cls, reports: Sequence[Report]) -> Totals:
        t = cls()
        for r in reports:
            t.marks[r.worker] = (r.window, r.books, r.cpu)
            t.window = max(t.window, r.window)
            t.cpu += r.cpu
            if r.window > 0:
                t.busiest_cpu = max(t.busiest_cpu, r.cpu / r.window)
                t.rate += r.books / r.window
                t.byte_rate += r.bytes / r.window
            for name in SUMMED:
                setattr(t, name, getattr(t, name) + getattr(r, name))
            for src, dst in ((r.failure_reasons, t.failure_reasons), (r.closed, t.closed)):
                for k, v in src.items():
                    dst[k] = dst.get(k, 0) + v
            t.error_samples.extend(r.error_samples[: 5 - len(t.error_samples)])
            latency.add(t.hist_ts, r.hist_ts)
            latency.add(t.hist_pts, r.hist_pts)
            t.max_ts = max(t.max_ts, r.max_ts)
            t.max_pts = max(t.max_pts, r.max_pts)
            t.per_client.extend(r.per_client)
        return t


@dataclass(slots=True)
class Result:
    """The plan, the final totals, and what follows from them."""

    plan: Plan
    processes: int
    totals: Totals
    files_note: str = ""

    @property
    def latency_ts(self) -> latency.Summary:
        return latency.summarize(self.totals.hist_ts, self.totals.max_ts)

    @property
    def latency_pts(self) -> latency.Summary:
        return latency.summarize(self.totals.hist_pts, self.totals.max_pts)

    @property
    def cpu_us_per_message(self) -> float:
        t = self.totals
        return t.cpu / t.books * 1e6 if t.books else 0.0

    @property
    def ceiling(self) -> float:
        """Messages/s the load generator could read with a whole core per process, at this cost."""
        cost = self.cpu_us_per_message
        return self.processes * 1e6 / cost if cost else 0.0

    @property
    def saturated(self) -> bool:
        return self.totals.busiest_cpu > 0.9

    def as_dict(self) -> dict[str, Any]:
        t, p = self.totals, self.plan
        clients = sorted(t.per_client)
        return {
            "urls": list(p.urls), "protocol": p.protocol, "instruments": list(p.instruments),
            "clients": p.clients, "stalled_clients": p.stalled, "duration_s": round(t.window, 3), "warmup_s": p.warmup,
            "connected": t.connected, "connect_failures": t.connect_failures, "failure_reasons": t.failure_reasons,
            "closed_by_server": t.closed, "open_at_end": t.open,
            "messages": t.books, "messages_per_s": round(t.rate, 1), "bytes_per_s": round(t.byte_rate, 1),
            "other_messages": t.others,
            "latency_ts": self.latency_ts.as_dict(), "latency_pts": self.latency_pts.as_dict(),
            "regressions": t.regressions, "conflated": t.conflated,
            "errors": t.errors, "error_samples": t.error_samples, "stale_notices": t.stale_notices,
            "per_client_messages": {"min": clients[0], "median": clients[len(clients) // 2], "max": clients[-1]} if clients else None,
            "bytes_per_message": round(t.bytes / t.books, 1) if t.books else None,
            "deltas": {"messages": t.deltas, "snapshots": t.books - t.deltas, "resyncs": t.resyncs, "gaps": t.gaps,
                       "checksum_failures": t.checksum_failures, "verifying_clients": t.verifying} if p.deltas else None,
            "load_generator": {
                "processes": self.processes, "cpu_s": round(t.cpu, 3),
                "cpu_us_per_message": round(self.cpu_us_per_message, 2),
                "busiest_process_core_share": round(t.busiest_cpu, 3),
                "ceiling_messages_per_s": round(self.ceiling), "saturated": self.saturated,
                "open_files": self.files_note,
            },
        }
