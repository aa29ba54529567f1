"""The ingestor's Prometheus view (`marketdata ingest --metrics-port`): its counters and who leads.

Counters are the plain integers of `IngestStats`, read when /metrics is scraped (the
hot path never calls prometheus-client). The names are public: dashboards use them.
prometheus-client's own HTTP server answers on a daemon thread, so a scrape costs the
event loop nothing; while the process is stopped (SIGSTOP) it does not answer either.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from marketdata.errors import MarketDataError
from marketdata.ingest.publish_queue import IngestStats

log = logging.getLogger(__name__)


class MetricsUnavailable(MarketDataError):
    """The metrics endpoint could not listen where it was told to."""

    def __init__(self, host: str, port: int, reason: object) -> None:
        super().__init__(f"cannot serve metrics on {host}:{port} ({reason}); choose another --metrics-port, or 0 for none")


@dataclass(frozen=True, slots=True)
class Gauges:
    """Levels read from the ingestor when scraped."""

    leader: bool
    sim_live: bool
    redis_up: bool


_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("ingest_leader_changes", "leader_changes", "Times this ingestor took or lost the publishing lease."),
    ("ingest_events", "events", "Simulator events applied to this ingestor's books (leader or standby)."),
    ("ingest_publishes", "publishes", "Book snapshots this ingestor published to Redis."),
    ("ingest_gaps", "gaps", "Sequence gaps in the simulator stream (each repaired by fresh snapshots)."),
    ("ingest_checksum_mismatches", "checksum_mismatches", "Rebuilt books that disagreed with the simulator's checksum."),
    ("ingest_fenced_writes", "fenced_writes", "Writes Redis refused because this ingestor's lease was no longer current."),
)


class _Collector:
    def __init__(self, stats: IngestStats, gauges: Callable[[], Gauges]) -> None:
        self._stats = stats
        self._gauges = gauges

    def describe(self) -> Iterator[Metric]:
        return self._families(Gauges(False, False, False))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._gauges())

    def _families(self, g: Gauges) -> Iterator[Metric]:
        yield GaugeMetricFamily("ingest_leader", "1 while this ingestor holds the publishing lease.", value=int(g.leader))
        yield GaugeMetricFamily("ingest_sim_live", "1 while the simulator stream is delivering.", value=int(g.sim_live))
        yield GaugeMetricFamily("ingest_redis_up", "1 when the last round trip to Redis succeeded.", value=int(g.redis_up))
        for name, attr, doc in _COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(self._stats, attr))


def registry(stats: IngestStats, gauges: Callable[[], Gauges]) -> CollectorRegistry:
    """A registry of the ingestor's metrics alone, read from `stats` and `gauges()` at each scrape."""
    reg = CollectorRegistry()
    reg.register(_Collector(stats, gauges))
    return reg


class MetricsServer:
    """/metrics on host:port until `close`; port 0 binds a free port (see `port`)."""

    def __init__(self, stats: IngestStats, gauges: Callable[[], Gauges], host: str, port: int) -> None:
        self.registry = registry(stats, gauges)
        try:
            self._server, self._thread = start_http_server(port, host, self.registry)
        except OSError as exc:
            raise MetricsUnavailable(host, port, exc.strerror or exc) from None
        self.host = host
        self.port: int = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        """Stop serving (blocks up to half a second: the server's poll interval)."""
        server: WSGIServer = self._server
        server.shutdown()
        server.server_close()
        thread: threading.Thread = self._thread
        thread.join(5)
