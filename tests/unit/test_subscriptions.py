"""The pub/sub connection against fakeredis: subscriptions follow what is wanted, last values come after."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import fakeredis
import pytest

from bridge.subscriptions import SHARDED, Subscriptions
from tests.support import async_wait_for
from tests.unit.bridge_fakes import BOOK, TRADES, snapshot, trade
from tests.unit.cluster_fakes import FakeCluster

ETH_BOOK = b"md:book:ETH-USD"


class Listener:
    """Records what the subscriptions tell the hub."""

    def __init__(self, wanted: Collection[bytes]) -> None:
        self.channels = set(wanted)
        self.batches: list[list[tuple[bytes, bytes]]] = []
        self.books: dict[bytes, bytes | None] = {}
        self.trades: dict[bytes, list[bytes]] = {}
        self.resubscribed = 0

    def wanted(self) -> Collection[bytes]:
        return self.channels

    def unprimed(self) -> Collection[bytes]:
        return []

    def deliver_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        self.batches.append(batch)

    def fetched_book(self, channel: bytes, payload: bytes | None) -> None:
        self.books[channel] = payload

    def fetched_trades(self, channel: bytes, history: list[bytes]) -> None:
        self.trades[channel] = history

    def resubscribing(self, channels: Collection[bytes] | None = None) -> None:
        self.resubscribed += 1


async def numsub(redis: fakeredis.FakeAsyncRedis, channel: bytes) -> int:
    return dict(await redis.pubsub_numsub(channel))[channel]


@pytest.mark.asyncio
async def test_sync_follows_what_is_wanted_and_fetches_whole_trade_lists() -> None:
    redis = fakeredis.FakeAsyncRedis()
    await redis.set(BOOK, snapshot(4))
    kept = 80  # as after `marketdata ingest --trades-history 80`
    for seq in range(1, kept + 1):
        await redis.lpush(TRADES, trade(seq))
    listener = Listener([BOOK, ETH_BOOK, TRADES])
    subs = Subscriptions(redis.pubsub(), redis, listener, b"md:book:")
    await subs.connect()
    reader = asyncio.create_task(subs.listen())
    try:
        await subs.sync()
        assert subs.count == 3 and await numsub(redis, TRADES) == 1
        assert listener.books == {BOOK: snapshot(4), ETH_BOOK: None}
        assert listener.trades[TRADES] == [trade(seq) for seq in range(kept, 0, -1)], "the whole list, newest first"
        await redis.publish(BOOK, snapshot(5))
        await async_wait_for(lambda: listener.batches, what="the live book")
        assert listener.batches == [[(BOOK, snapshot(5))]]
        listener.channels = {BOOK}
        await subs.sync()
        assert subs.count == 1 and await numsub(redis, TRADES) == 0
        await subs.connect()  # a new connection has nothing subscribed until the next sync
        assert subs.count == 0 and listener.resubscribed == 2
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await subs.aclose()
        await redis.aclose()


@pytest.mark.asyncio
async def test_sharded_the_answer_to_our_own_unsubscribe_is_not_taken_for_the_servers_drop() -> None:
    cluster = FakeCluster(1)
    node = cluster.nodes[0]
    channel = b"md:book:{BTC-USD}"
    listener = Listener([channel])
    dropped: list[list[bytes]] = []
    subs = Subscriptions(cluster.open_pubsub(node.host, node.port), cluster, listener, b"md:book:", SHARDED, dropped.append)
    await subs.connect()
    reader = asyncio.create_task(subs.listen())
    await subs.sync()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    listener.channels = set()
    await subs.sync()  # SUNSUBSCRIBE sent; its answer waits unread
    listener.channels = {channel}
    again = asyncio.create_task(subs.sync())  # wanted again before the answer came
    await asyncio.sleep(0)
    reader = asyncio.create_task(subs.listen())
    try:
        await again
        assert subs.count == 1 and dropped == [] and node.pubsubs[0].channels == {channel}
        node.drop(channel)  # now the server's own: its slot moved
        await async_wait_for(lambda: dropped, what="the server's drop")
        assert dropped == [[channel]] and subs.count == 0
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await subs.aclose()
