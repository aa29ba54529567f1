"""The bridge's Prometheus view: plain counters on the hot path, read at scrape time.

The hot path only adds to integer fields of `Stats` (tens of nanoseconds), never
calls prometheus-client per message; a custom collector turns them into metric
families when /metrics is scraped. Each app gets its own registry, so several
bridges can live in one process (the tests do that). With several worker processes on
one port (bridge.workers) any worker's /metrics answers for all of them: each publishes
its counters to a private directory (`Board`) and the one scraped sums them
(bridge.worker_stats), under the same names.
"""

from __future__ import annotations

import contextlib
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from bridge import worker_stats
from bridge.limits import REFUSALS
from bridge.verify import REASONS

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds from a message's arrival from Redis to its write on a socket.
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Latency:
    """A histogram cheap enough to observe per delivery: one bisect and two adds."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


@dataclass(slots=True)
class Stats:
    """Counters the hub and the sockets bump; monotonic except where noted."""

    messages_in: int = 0  # payloads received from Redis pub/sub (good or bad)
    messages_out: int = 0  # messages written to sockets (a batch frame counts each message in it)
    conflated: int = 0  # pending messages overwritten by a newer one before a slow socket took them
    bus_conflated: int = 0  # books skipped because a newer one of the channel came in the same read from Redis
    stale: int = 0  # messages dropped because the receiver already had that (epoch, seq) or a later one, or a trade of an epoch not adopted
    bad_messages: int = 0  # garbage payloads on a channel, dropped
    books_rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))  # by bridge.verify reason
    slow_consumer_closes: int = 0
    origin_rejects: int = 0
    refusals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))  # reason -> count (bridge.limits)
    redis_reconnects: int = 0
    latency: Latency = field(default_factory=Latency)


@dataclass(frozen=True, slots=True)
class Gauges:
    """Levels read from the hub when scraped."""

    sockets: int
    subscriptions: int
    feed_live: bool
    redis_up: bool


_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("bridge_messages_in", "messages_in", "Messages received from Redis pub/sub."),
    ("bridge_messages_out", "messages_out", "Messages written to WebSocket clients."),
    ("bridge_conflated", "conflated", "Pending messages replaced by a newer one for a slow client (latest-only)."),
    ("bridge_bus_conflated", "bus_conflated", "Books skipped for a newer one of the same channel read from Redis at once (bridge behind the feed)."),
    ("bridge_stale_dropped", "stale", "Messages not sent because the receiver already had that (epoch, seq) or a later one, or trades of an epoch not adopted."),
    ("bridge_bad_messages", "bad_messages", "Garbage messages on a Redis channel, logged and dropped."),
    ("bridge_slow_consumer_closes", "slow_consumer_closes", "Sockets closed 1008 for staying stuck in a send."),
    ("bridge_origin_rejects", "origin_rejects", "WebSocket handshakes refused for a disallowed Origin."),
    ("bridge_redis_reconnects", "redis_reconnects", "Times the pub/sub connection to Redis was re-established."),
)


class _Collector:
    """Turns Stats and the hub's gauges into metric families at scrape time."""

    def __init__(self, stats: Stats, gauges: Callable[[], Gauges]) -> None:
        self._stats = stats
        self._gauges = gauges

    def describe(self) -> Iterator[Metric]:
        return self._families(Gauges(0, 0, False, False))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._gauges())

    def _families(self, g: Gauges) -> Iterator[Metric]:
        s = self._stats
        yield GaugeMetricFamily("bridge_sockets_open", "WebSocket clients connected to this bridge.", value=g.sockets)
        yield GaugeMetricFamily("bridge_subscriptions", "Redis pub/sub channels this bridge is subscribed to.", value=g.subscriptions)
        yield GaugeMetricFamily("bridge_feed_live", "1 when the ingestor's heartbeat is fresh and Redis reachable.", value=int(g.feed_live))
        yield GaugeMetricFamily("bridge_redis_up", "1 when the bridge's pub/sub connection to Redis is up.", value=int(g.redis_up))
        for name, attr, doc in _COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(s, attr))
        refusals = CounterMetricFamily("bridge_refusals", "Connections, sockets and requests refused by a limit or the Origin policy, by reason.", labels=("reason",))
        for reason, n in s.refusals.items():
            refusals.add_metric((reason,), n)
        yield refusals
        rejected = CounterMetricFamily("bridge_books_rejected", "Books dropped before fan-out because they did not prove themselves, by reason.", labels=["reason"])
        for reason, n in s.books_rejected.items():
            rejected.add_metric([reason], n)
        yield rejected
        yield HistogramMetricFamily(
            "bridge_send_latency_seconds",
            "Seconds from a message's arrival from Redis to its write on a socket.",
            buckets=s.latency.cumulative(),
            sum_value=s.latency.total,
        )


class Metrics:
    """One registry per app, holding the bridge's collector."""

    def __init__(self, stats: Stats, gauges: Callable[[], Gauges]) -> None:
        self.stats = stats
        self.gauges = gauges
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(stats, gauges))
        self._board: tuple[Board, int, str] | None = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def share(self, board: Board, worker: int, name: str) -> None:
        """From now on publish this process's counters as file `name` of `board`, and render
        every worker's sum (bridge.workers: one worker of several serving a port)."""
        self._board = (board, worker, name)
        self.registry = CollectorRegistry()
        self.registry.register(_Summed(self, board))

    def publish(self) -> None:
        """Write this worker's snapshot to the board (a no-op unless shared)."""
        if self._board is not None:
            board, worker, name = self._board
            board.publish(name, worker_stats.snapshot(worker, self.stats, self.gauges()))


# -- several workers, one port (bridge.workers): the counters summed through a private directory --


class Board:
    """A private directory where each worker keeps its latest snapshot (`live-*.json`) and the
    parent the counters of dead workers (`retired.json`); any worker's /metrics sums them.

    Files are replaced whole (write a temporary file, then rename), so a reader sees an old
    snapshot or a new one, never half of one.
    """

    RETIRED = "retired.json"

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def live_name(worker: int, generation: int) -> str:
        return f"live-{worker}-{generation}.json"

    def publish(self, name: str, data: dict[str, Any]) -> None:
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(orjson.dumps(data))
        os.replace(tmp, self.path / name)

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def _load(self, name: str) -> dict[str, Any] | None:
        try:
            return orjson.loads((self.path / name).read_bytes())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def read(self) -> worker_stats.Merged:
        """Every worker's counters summed, the live workers' gauges."""
        for _ in range(3):
            # Listed before retired.json is read: the parent writes retired.json (absorbing a
            # dead worker's file) before it removes that file, so a listed file that is gone
            # by the time it is opened is in the retired.json of the next attempt.
            names = sorted(n for n in os.listdir(self.path) if n.startswith("live-") and n.endswith(".json"))
            retired = worker_stats.Retired.from_json(self._load(self.RETIRED))
            live = [self._load(n) for n in names if n not in retired.absorbed]
            if all(snap is not None for snap in live):
                break
        return worker_stats.merge([snap for snap in live if snap is not None], retired)

    def retire(self, name: str) -> None:
        """Fold a dead worker's last snapshot into the retired counters, then remove its file."""
        retired = worker_stats.Retired.from_json(self._load(self.RETIRED))
        self.publish(self.RETIRED, worker_stats.retire(retired, name, self._load(name)).to_json())
        with contextlib.suppress(FileNotFoundError):
            (self.path / name).unlink()


class _Summed:
    """The bridge's families as every worker's sum (same names, same lines), plus each worker's sockets."""

    def __init__(self, metrics: Metrics, board: Board) -> None:
        self._metrics = metrics
        self._board = board

    def describe(self) -> Iterator[Metric]:
        yield from _Collector(Stats(), lambda: Gauges(0, 0, False, False)).describe()
        yield GaugeMetricFamily("bridge_worker_sockets_open", _WORKER_SOCKETS, labels=("worker",))

    def collect(self) -> Iterator[Metric]:
        self._metrics.publish()  # this worker's own counters as fresh as the scrape
        merged = self._board.read()
        stats = worker_stats.fill(Stats(), merged.counters)
        gauges = Gauges(**{f.name: merged.gauges.get(f.name, 0) for f in fields(Gauges)})
        yield from _Collector(stats, lambda: gauges).collect()
        family = GaugeMetricFamily("bridge_worker_sockets_open", _WORKER_SOCKETS, labels=("worker",))
        for worker, n in merged.sockets_by_worker.items():
            family.add_metric((str(worker),), n)
        yield family


_WORKER_SOCKETS = "WebSocket clients connected to each worker process of this bridge (--workers)."
