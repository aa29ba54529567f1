"""The bus against fakeredis: it rides out Redis being away, says why meanwhile, and backs off."""

from __future__ import annotations

import logging
import random
from collections.abc import Collection

import fakeredis
import pytest

from bridge.bus import Bus, Wiring, reconnect_backoff
from bridge.feed_state import Feed
from bridge.metrics import Stats
from marketdata import schema
from marketdata.settings import BridgeSettings
from tests.support import async_wait_for
from tests.unit.bridge_fakes import BOOK
from tests.unit.cluster_fakes import FakeCluster

NOW_US = 1_800_000_000_000_000


class Listener:
    """Records what the bus tells the hub."""

    def __init__(self, wanted: Collection[bytes] = ()) -> None:
        self.channels = set(wanted)
        self.feeds: list[Feed] = []
        self.books: list[tuple[bytes, bytes | None]] = []

    def wanted(self) -> Collection[bytes]:
        return self.channels

    def unprimed(self) -> Collection[bytes]:
        return []

    def deliver_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        pass

    def fetched_book(self, channel: bytes, payload: bytes | None) -> None:
        self.books.append((channel, payload))

    def fetched_trades(self, channel: bytes, history: list[bytes]) -> None:
        pass

    def resubscribing(self, channels: Collection[bytes] | None = None) -> None:
        pass

    def feed_changed(self, feed: Feed) -> None:
        self.feeds.append(feed)


def test_reconnects_back_off_capped_exponential_with_jitter() -> None:
    backoff = reconnect_backoff(random.Random(3))
    delays = [backoff.next() for _ in range(12)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(2.5 <= d <= 5.0 for d in delays[6:])
    assert len(set(delays[6:])) > 1
    backoff.reset()
    assert 0.05 <= backoff.next() <= 0.1


@pytest.mark.asyncio
async def test_a_bus_started_without_redis_connects_when_it_comes(caplog: pytest.LogCaptureFixture) -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    await redis.set("md:heartbeat", schema.encode_heartbeat(NOW_US, "test"))
    await redis.set(BOOK, b"last")
    server.connected = False
    listener = Listener([BOOK])
    settings = BridgeSettings(redis_url="redis://bridge:secret@redis.example:6379/0", stale_after=0.2)
    caplog.set_level(logging.INFO, logger="bridge")
    async with Bus(settings, Stats(), listener, Wiring(redis=redis, rng=random.Random(1), clock=lambda: NOW_US)) as bus:
        assert (bus.feed.live, bus.feed.reason, bus.up) == (False, "redis unreachable", False)
        server.connected = True
        await async_wait_for(lambda: bus.feed.live, what="the feed once Redis is back")
        await async_wait_for(lambda: listener.books, what="the last value of the wanted channel")
        assert bus.up and bus.subscriptions == 1
        assert listener.books == [(BOOK, b"last")]
    reasons = [f.reason for f in listener.feeds]  # "redis pub/sub not connected" between them if the poll came first
    assert reasons[0] == "redis unreachable" and reasons[-1] == "live" and len(set(reasons)) == len(reasons)
    assert "redis.example" in caplog.text and "secret" not in caplog.text
    await redis.aclose()


@pytest.mark.asyncio
async def test_a_cluster_bus_subscribes_per_primary_and_reads_the_cluster_names() -> None:
    cluster = FakeCluster(3)
    keys = schema.Keys("md", cluster=True)
    book = keys.book("BTC-USD").encode()
    cluster.data[keys.heartbeat.encode()] = schema.encode_heartbeat(NOW_US, "test")
    cluster.data[book] = b"last"
    listener = Listener([book])
    settings = BridgeSettings(redis_url="rediss://bridge:secret@seed.example:7000/0", redis_cluster=True, stale_after=0.2)
    wiring = Wiring(redis=cluster, open_pubsub=cluster.open_pubsub, rng=random.Random(1), clock=lambda: NOW_US)
    async with Bus(settings, Stats(), listener, wiring) as bus:
        await async_wait_for(lambda: listener.books, what="the last value, by key")
        assert bus.feed.live and bus.subscriptions == 1 and listener.books == [(book, b"last")]
        assert [ps.node for ps in cluster.opened] == [cluster.node_of(book)]
        node = bus._node_pubsub("10.0.0.2", 7002).connection_pool.connection_kwargs
        assert (node["host"], node["port"], node["username"], node["password"]) == ("10.0.0.2", 7002, "bridge", "secret")
        v6 = bus._node_pubsub("::1", 7003).connection_pool.connection_kwargs
        assert (v6["host"], v6["port"]) == ("::1", 7003)


@pytest.mark.asyncio
async def test_a_cluster_bus_retries_a_failing_sync_with_a_growing_delay_until_a_successor_owns_the_slot() -> None:
    cluster = FakeCluster(3)
    book = schema.Keys("md", cluster=True).book("BTC-USD").encode()
    dead = cluster.node_of(book)
    dead.die()
    listener = Listener([book])
    settings = BridgeSettings(redis_url="redis://seed.example:7000", redis_cluster=True, stale_after=0.2)
    wiring = Wiring(redis=cluster, open_pubsub=cluster.open_pubsub, rng=random.Random(1), clock=lambda: NOW_US)
    async with Bus(settings, Stats(), listener, wiring) as bus:
        await async_wait_for(lambda: bus._sync_retry.attempts >= 3, what="failed syncs")
        assert bus.up, "one shard's outage is not the pub/sub's"
        cluster.fail_over(dead, next(n for n in cluster.nodes if n is not dead))
        await async_wait_for(lambda: listener.books == [(book, None)], timeout=5, what="the channel on the promoted replica")
        assert bus._sync_retry.attempts == 0 and bus.subscriptions == 1
