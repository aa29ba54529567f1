"""The bridge's Prometheus view: counters read at scrape time, a cheap latency histogram."""

from __future__ import annotations

from bridge.metrics import Gauges, Latency, Metrics, Stats


def test_latency_buckets_are_cumulative() -> None:
    latency = Latency((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.005, 3.0):
        latency.observe(seconds)
    assert latency.cumulative() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert latency.count == 4


def test_render_reads_the_counters_and_gauges_when_scraped() -> None:
    stats = Stats()
    metrics = Metrics(stats, lambda: Gauges(sockets=3, subscriptions=2, feed_live=True, redis_up=True))
    stats.messages_out += 7
    text = metrics.render().decode()
    assert "bridge_messages_out_total 7.0" in text
    assert "bridge_sockets_open 3.0" in text and "bridge_feed_live 1.0" in text
    assert 'bridge_send_latency_seconds_bucket{le="+Inf"} 0.0' in text
