"""Sharded subscriptions against a fake cluster: routed by slot, healed per shard when a slot moves or a primary dies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection

import pytest
import pytest_asyncio
from redis.exceptions import ConnectionError, RedisError

from bridge.shards import Shards
from marketdata.schema import Keys
from marketdata.slots import key_slot
from tests.support import async_wait_for
from tests.unit.cluster_fakes import FakeCluster, FakeNode

KEYS = Keys("md", cluster=True)


class Listener:
    """Records what the shards tell the hub."""

    def __init__(self) -> None:
        self.channels: set[bytes] = set()
        self.delivered: list[tuple[bytes, bytes]] = []
        self.books: list[tuple[bytes, bytes | None]] = []
        self.trades: list[tuple[bytes, list[bytes]]] = []
        self.resubscribed: list[set[bytes] | None] = []
        self.changes = 0

    def wanted(self) -> Collection[bytes]:
        return self.channels

    def unprimed(self) -> Collection[bytes]:
        return []

    def deliver_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        self.delivered.extend(batch)

    def fetched_book(self, channel: bytes, payload: bytes | None) -> None:
        self.books.append((channel, payload))

    def fetched_trades(self, channel: bytes, history: list[bytes]) -> None:
        self.trades.append((channel, history))

    def resubscribing(self, channels: Collection[bytes] | None = None) -> None:
        self.resubscribed.append(None if channels is None else set(channels))

    def changed(self) -> None:
        self.changes += 1


def books_on(cluster: FakeCluster, node: FakeNode, count: int = 2) -> list[bytes]:
    """`count` book channels whose slots `node` owns."""
    found = []
    for i in range(1000):
        channel = KEYS.book(f"I{i}").encode()
        if cluster.node_of(channel) is node:
            found.append(channel)
            if len(found) == count:
                return found
    raise AssertionError("no channels on that node")


@pytest_asyncio.fixture
async def setup() -> AsyncIterator[tuple[FakeCluster, Listener, Shards]]:
    cluster = FakeCluster(3)
    listener = Listener()
    shards = Shards(cluster, listener, b"md:book:", cluster.open_pubsub, listener.changed)
    await shards.connect()
    yield cluster, listener, shards
    await shards.aclose()


def subscribed(cluster: FakeCluster, node: FakeNode) -> set[bytes]:
    return {c for ps in node.pubsubs for c in ps.channels}


@pytest.mark.asyncio
async def test_each_channel_is_subscribed_on_its_slots_primary_and_fetched_per_key(setup: tuple[FakeCluster, Listener, Shards]) -> None:
    cluster, listener, shards = setup
    a, b, c = cluster.nodes
    on_a, on_b = books_on(cluster, a), books_on(cluster, b)
    trades_a = KEYS.trades("I-trades").encode()
    cluster.data[on_a[0]] = b"last-a"
    cluster.data[trades_a] = [b"t2", b"t1"]
    listener.channels = {*on_a, *on_b, trades_a}
    await shards.sync()
    for node in (a, b, c):
        assert subscribed(cluster, node) == {ch for ch in listener.channels if cluster.node_of(ch) is node}
    assert shards.count == 5 and len(cluster.opened) == len({cluster.node_of(ch).name for ch in listener.channels})
    assert all(len(set(map(key_slot, chans))) == 1 for ps in cluster.opened for _, chans in ps.commands), "a command per slot"
    assert dict(listener.books) == {on_a[0]: b"last-a", on_a[1]: None, on_b[0]: None, on_b[1]: None}
    assert listener.trades == [(trades_a, [b"t2", b"t1"])]
    a.publish(on_a[0], b"live-a")
    b.publish(on_b[1], b"live-b")
    await async_wait_for(lambda: len(listener.delivered) == 2, what="both shards' books")
    assert sorted(listener.delivered) == sorted([(on_a[0], b"live-a"), (on_b[1], b"live-b")])
    listener.channels = {on_b[1]}
    await shards.sync()
    assert subscribed(cluster, a) == set() and subscribed(cluster, b) == {on_b[1]} and shards.count == 1


@pytest.mark.asyncio
async def test_a_slot_moved_by_the_server_resubscribes_that_channel_on_its_new_owner(setup: tuple[FakeCluster, Listener, Shards]) -> None:
    cluster, listener, shards = setup
    a, b, _ = cluster.nodes
    moving, staying = books_on(cluster, a)
    listener.channels = {moving, staying}
    await shards.sync()
    listener.books.clear()
    cluster.move(moving, b)
    cluster.data[moving] = b"moved-last"
    refreshes = cluster.nodes_manager.refreshes
    a.drop(moving)  # the server's own sunsubscribe: the slot is gone from a
    await async_wait_for(lambda: listener.changes, what="the bus asked to sync")
    assert listener.resubscribed[-1] == {moving}, "only the moved channel is unprimed"
    await shards.sync()
    assert cluster.nodes_manager.refreshes == refreshes + 1, "the slot map is read again"
    assert subscribed(cluster, b) == {moving} and subscribed(cluster, a) == {staying}
    assert listener.books == [(moving, b"moved-last")], "healed from the last value, the other channel not fetched again"
    b.publish(moving, b"live")
    await async_wait_for(lambda: (moving, b"live") in listener.delivered, what="the moved channel's books from its new owner")


@pytest.mark.asyncio
async def test_a_move_nobody_announced_is_found_by_the_periodic_recheck(setup: tuple[FakeCluster, Listener, Shards]) -> None:
    # The slot moved, but no sunsubscribe came and no connection broke (the map had been read
    # from a node that did not know yet): the recheck reads the map again and moves the channel.
    cluster, listener, shards = setup
    a, b, _ = cluster.nodes
    moving, staying = books_on(cluster, a)
    listener.channels = {moving, staying}
    await shards.sync()
    await shards.recheck()
    assert listener.changes == 0 and listener.resubscribed[-1] is None, "nothing moved: nothing to do"
    cluster.move(moving, b)
    cluster.data[moving] = b"moved-last"
    listener.books.clear()
    await shards.recheck()
    assert listener.resubscribed[-1] == {moving} and listener.changes == 1
    await shards.sync()
    assert subscribed(cluster, b) == {moving} and subscribed(cluster, a) == {staying}
    assert listener.books == [(moving, b"moved-last")], "healed from the last value on its new owner"


# RuntimeError: what uvloop raises when redis-py's reconnect writes to the transport of a dying primary.
@pytest.mark.parametrize("error", [ConnectionError, RuntimeError])
@pytest.mark.asyncio
async def test_a_lost_primary_resubscribes_only_its_channels_once_a_successor_owns_them(
    setup: tuple[FakeCluster, Listener, Shards], error: type[Exception]
) -> None:
    cluster, listener, shards = setup
    a, b, c = cluster.nodes
    on_a, on_b = books_on(cluster, a), books_on(cluster, b)
    listener.channels = {*on_a, *on_b}
    await shards.sync()
    listener.books.clear()
    a.die(error)
    await async_wait_for(lambda: listener.resubscribed[-1:] == [set(on_a)], what="the dead shard's channels unprimed")
    assert listener.changes
    with pytest.raises(RedisError):
        await shards.sync()  # the map still names the dead primary: the bus retries
    b.publish(on_b[0], b"still-flowing")
    await async_wait_for(lambda: (on_b[0], b"still-flowing") in listener.delivered, what="the other shard's books meanwhile")
    cluster.fail_over(a, c)  # the replica on c is promoted
    for ch in on_a:
        cluster.data[ch] = b"last-" + ch
    await shards.sync()
    assert subscribed(cluster, c) == set(on_a) and subscribed(cluster, b) == set(on_b)
    assert sorted(listener.books) == sorted((ch, b"last-" + ch) for ch in on_a), "only the dead shard's channels fetched again"
    assert shards.count == 4


@pytest.mark.asyncio
async def test_a_refused_subscribe_is_routed_again_after_a_refresh(setup: tuple[FakeCluster, Listener, Shards]) -> None:
    cluster, listener, shards = setup
    a, b, _ = cluster.nodes
    channel = books_on(cluster, a, 1)[0]
    cluster.move(channel, b)  # the client's map still says a
    listener.channels = {channel}
    with pytest.raises(RedisError):
        await shards.sync()  # a answers MOVED
    await shards.sync()
    assert subscribed(cluster, b) == {channel} and subscribed(cluster, a) == set()
    assert listener.books == [(channel, None)]


@pytest.mark.asyncio
async def test_connect_starts_over_and_listen_waits(setup: tuple[FakeCluster, Listener, Shards]) -> None:
    cluster, listener, shards = setup
    a = cluster.nodes[0]
    listener.channels = set(books_on(cluster, a))
    await shards.sync()
    await shards.connect()
    assert shards.count == 0 and subscribed(cluster, a) == set() and listener.resubscribed[-1] is None
    listen = asyncio.create_task(shards.listen())
    await asyncio.sleep(0)
    assert not listen.done()
    listen.cancel()
    await asyncio.gather(listen, return_exceptions=True)
