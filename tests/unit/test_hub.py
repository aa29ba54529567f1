"""The hub against fakeredis and fake sockets: subscriptions, last values, late joiners, feed state."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import fakeredis
import pytest
import pytest_asyncio

from bridge.bus import Wiring
from bridge.hub import Hub
from bridge.metrics import Stats
from bridge.topic import MIN_REPLAY
from marketdata import schema
from marketdata.errors import UnknownInstrument
from marketdata.instruments import DEFAULT_INSTRUMENTS, select
from marketdata.settings import BridgeSettings
from tests.support import async_wait_for
from tests.unit.bridge_fakes import BOOK, TRADES, Sink, snapshot, trade
from tests.unit.cluster_fakes import FakeCluster

NOW_US = 1_800_000_000_000_000
CLUSTER_KEYS = schema.Keys("md", cluster=True)
(SOL,) = select(["SOL-USD"])


@dataclass
class Rig:
    hub: Hub
    redis: fakeredis.FakeAsyncRedis
    stats: Stats
    now: list[int]  # the wall clock the hub reads, in µs: tests move it


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    await redis.set("md:instruments", schema.encode_instruments(DEFAULT_INSTRUMENTS))
    await redis.set("md:heartbeat", schema.encode_heartbeat(NOW_US, "test"))
    stats = Stats()
    settings = BridgeSettings(redis_url="redis://fake", send_timeout=0.2, stale_after=0.2)  # polls every 0.1 s
    now = [NOW_US]
    async with Hub(settings, stats, Wiring(redis=redis, rng=random.Random(1), clock=lambda: now[0])) as hub:
        await async_wait_for(lambda: hub.feed.live, what="the hub's pub/sub to connect")
        yield Rig(hub, redis, stats, now)
    await redis.aclose()


async def publish(redis: fakeredis.FakeAsyncRedis, payload: bytes, channel: bytes = BOOK) -> None:
    """As the ingestor's script does: SET the last-value key, then PUBLISH (a new epoch is checked against the key)."""
    await redis.set(channel, payload)
    await redis.publish(channel, payload)


async def subscribers(redis: fakeredis.FakeAsyncRedis, channel: bytes) -> int:
    return dict(await redis.pubsub_numsub(channel))[channel]


@pytest.mark.asyncio
async def test_first_interest_subscribes_and_sends_the_last_value(rig: Rig) -> None:
    await rig.redis.set(BOOK, snapshot(5))
    sink = Sink()
    rig.hub.attach(sink)
    rig.hub.want(sink, "BTC-USD")
    await async_wait_for(lambda: sink.books, what="the last value")
    assert sink.books == [(BOOK, 5)]
    assert await subscribers(rig.redis, BOOK) == 1
    await publish(rig.redis, snapshot(6))
    await async_wait_for(lambda: len(sink.books) == 2, what="the live book")
    assert sink.seqs() == [5, 6]


@pytest.mark.asyncio
async def test_a_late_joiner_gets_the_book_from_memory(rig: Rig) -> None:
    first, late = Sink(), Sink()
    rig.hub.want(first, "BTC-USD")
    await async_wait_for(lambda: rig.hub.subscriptions == 1, what="the subscription")
    await async_wait_for(lambda: rig.hub.topic(BOOK).primed, what="priming")  # type: ignore[union-attr]
    await publish(rig.redis, snapshot(9))
    await async_wait_for(lambda: first.books, what="the live book")
    await rig.redis.delete(BOOK)  # nothing in Redis: the late joiner's book can only come from memory
    rig.hub.want(late, "BTC-USD")
    assert late.books == [(BOOK, 9)]  # synchronously, no round trip
    assert await subscribers(rig.redis, BOOK) == 1


@pytest.mark.asyncio
async def test_the_last_socket_leaving_drops_the_subscription(rig: Rig) -> None:
    a, b = Sink(), Sink()
    rig.hub.attach(a)
    rig.hub.attach(b)
    rig.hub.want(a, "BTC-USD")
    rig.hub.want(b, "BTC-USD")
    await async_wait_for(lambda: rig.hub.subscriptions == 1, what="one subscription for two sockets")
    await async_wait_for(lambda: rig.hub.topic(BOOK).primed, what="priming")  # type: ignore[union-attr]
    rig.hub.detach(a)
    # b still gets live books through the one subscription, which a's leaving kept.
    await publish(rig.redis, snapshot(7))
    await async_wait_for(lambda: (BOOK, 7) in b.books, what="the live book after a left")
    assert (BOOK, 7) not in a.books
    assert rig.hub.subscriptions == 1 and await subscribers(rig.redis, BOOK) == 1
    rig.hub.detach(b)
    await async_wait_for(lambda: rig.hub.subscriptions == 0, what="the unsubscribe")
    assert await subscribers(rig.redis, BOOK) == 0
    assert rig.hub.topic(BOOK) is None
    assert BOOK in a.forgotten and BOOK in b.forgotten


@pytest.mark.asyncio
async def test_a_fetched_value_never_goes_behind_live(rig: Rig) -> None:
    await rig.redis.set(BOOK, snapshot(3))
    sink = Sink()
    rig.hub.want(sink, "BTC-USD")
    rig.hub.deliver(BOOK, snapshot(4))  # live raced ahead of the GET: it waits for the fetched value, then follows it
    await async_wait_for(lambda: rig.hub.topic(BOOK).primed, what="priming")  # type: ignore[union-attr]
    assert sink.seqs() == [3, 4]
    rig.hub.deliver(BOOK, snapshot(3))
    assert sink.seqs() == [3, 4]


@pytest.mark.asyncio
async def test_trades_history_oldest_first_then_live_without_duplicates(rig: Rig) -> None:
    await rig.redis.set(BOOK, snapshot(1))  # trades follow the epoch of the instrument's books
    for seq in (1, 2, 3):
        await rig.redis.lpush(TRADES, trade(seq))  # Redis keeps them newest first
    sink = Sink()
    rig.hub.want(sink, "BTC-USD", trades=True)
    await async_wait_for(lambda: len(sink.trades) == 3, what="recent trades")
    assert [s for _, s in sink.trades] == [1, 2, 3]
    await rig.redis.publish(TRADES, trade(3))
    await rig.redis.publish(TRADES, trade(4))
    await async_wait_for(lambda: len(sink.trades) == 4, what="a live trade")
    assert [s for _, s in sink.trades] == [1, 2, 3, 4]
    late = Sink()
    rig.hub.want(late, "BTC-USD", trades=True)
    assert [s for _, s in late.trades] == [1, 2, 3, 4]
    rig.hub.want(sink, "BTC-USD", trades=False)  # keeps the book, drops the trades
    assert TRADES in sink.forgotten and BOOK not in sink.forgotten


@pytest.mark.asyncio
async def test_unknown_instruments_and_refresh_on_miss(rig: Rig) -> None:
    await rig.hub.lookup("BTC-USD")
    with pytest.raises(UnknownInstrument):
        await rig.hub.lookup("DOGE-USD")
    listed = (*DEFAULT_INSTRUMENTS, DEFAULT_INSTRUMENTS[0].__class__("DOGE-USD", "crypto", "Doge", "0.0001", "1", 4, 0))
    await rig.redis.set("md:instruments", schema.encode_instruments(listed))
    rig.hub._bus.instruments._loaded_at -= 10  # the refresh-on-miss is rate limited; pretend the last one is old
    await rig.hub.lookup("DOGE-USD")
    assert b"DOGE-USD" in rig.hub.instruments_json


@pytest.mark.asyncio
async def test_feed_changes_are_pushed_to_sockets(rig: Rig) -> None:
    sink = Sink()
    rig.hub.attach(sink)
    assert sink.feeds[-1]["live"] is True
    await rig.redis.delete("md:heartbeat")
    await async_wait_for(lambda: sink.feeds[-1]["live"] is False, what="the feed to go stale")
    assert sink.feeds[-1]["reason"] == "no heartbeat from the ingestor"
    assert rig.hub.ready == (False, "no heartbeat from the ingestor")


@pytest.mark.asyncio
async def test_a_stuck_socket_is_closed_and_shutdown_closes_the_rest(rig: Rig) -> None:
    stuck, fine = Sink(), Sink()
    rig.hub.attach(stuck)
    rig.hub.attach(fine)
    stuck.stuck_since = asyncio.get_running_loop().time()
    await async_wait_for(lambda: stuck.slow_closed, what="the watchdog")
    assert not fine.slow_closed
    await rig.hub.close_sockets(1001, "bye")
    assert fine.closed == 1001


@pytest.mark.asyncio
async def test_trades_replay_as_many_as_the_ingestor_keeps(rig: Rig) -> None:
    kept = MIN_REPLAY + 30  # as after `marketdata ingest --trades-history 80`
    await rig.redis.set(BOOK, snapshot(1))
    for seq in range(1, kept + 1):
        await rig.redis.lpush(TRADES, trade(seq))
    sink = Sink()
    rig.hub.want(sink, "BTC-USD", trades=True)
    await async_wait_for(lambda: len(sink.trades) == kept, what="the whole list the ingestor keeps")
    await rig.redis.publish(TRADES, trade(kept + 1))
    await async_wait_for(lambda: len(sink.trades) == kept + 1, what="a live trade")
    late = Sink()
    rig.hub.want(late, "BTC-USD", trades=True)
    assert [s for _, s in late.trades] == list(range(2, kept + 2)), "a late joiner gets as many as Redis keeps"


@pytest.mark.asyncio
async def test_verified_books_tell_the_sockets_the_feed_is_live_at_once(rig: Rig) -> None:
    await rig.redis.set(BOOK, snapshot(5))
    sink = Sink()
    rig.hub.attach(sink)
    rig.hub.want(sink, "BTC-USD")
    await async_wait_for(lambda: sink.books, what="the last value")
    await rig.redis.delete("md:heartbeat")
    await async_wait_for(lambda: not sink.feeds[-1]["live"], what="the feed to go stale")
    rig.hub.deliver(BOOK, snapshot(6))
    assert sink.feeds[-1]["live"] is True, "the book itself tells the feed is live, not the next poll"
    assert rig.hub.ready == (True, "live")
    rig.now[0] += 300_000  # stale_after (0.2 s) without a verified book
    rig.hub.deliver(BOOK, snapshot(7, checksum=1))  # a book that does not prove itself proves nothing of the feed
    await async_wait_for(lambda: not sink.feeds[-1]["live"], what="stale again once books stop and no heartbeat")
    assert sink.feeds[-1]["reason"] == "no heartbeat from the ingestor"
    assert sink.seqs() == [5, 6]


@pytest.mark.asyncio
async def test_a_delta_socket_subscribes_the_delta_channel_with_no_fetch_and_resyncs(rig: Rig) -> None:
    delta_channel = b"md:delta:BTC-USD"
    await rig.redis.set(BOOK, snapshot(5))
    plain, wants = Sink(), Sink()
    rig.hub.want(plain, "BTC-USD")
    rig.hub.want(wants, "BTC-USD", deltas=True)
    await async_wait_for(lambda: rig.hub.subscriptions == 2, what="the book and delta subscriptions")
    assert await subscribers(rig.redis, delta_channel) == 1
    topic = rig.hub.topic(delta_channel)
    assert topic is not None and topic.deltas and not topic.trades and topic.book_channel == BOOK
    await async_wait_for(lambda: wants.books, what="the last value")
    assert wants.books == plain.books == [(BOOK, 5)]
    assert rig.hub.resync(wants, "BTC-USD") and wants.resyncs == [(BOOK, 5)]
    assert not rig.hub.resync(wants, "ETH-USD"), "not subscribed to it"
    rig.hub.want(wants, "BTC-USD", deltas=False)  # subscribed again without deltas
    await async_wait_for(lambda: rig.hub.subscriptions == 1, what="the delta channel dropped")
    assert BOOK not in wants.forgotten, "the books' slot stays"


@pytest.mark.asyncio
async def test_a_channel_left_and_joined_again_before_the_subscriptions_follow_gets_its_last_value(rig: Rig) -> None:
    await rig.redis.set(BOOK, snapshot(5))
    first = Sink()
    rig.hub.want(first, "BTC-USD")
    await async_wait_for(lambda: first.books, what="the last value")
    again = Sink()
    rig.hub.unwant(first, "BTC-USD")  # the last socket leaves (a page reloads) and a new one comes,
    rig.hub.want(again, "BTC-USD")  # both before the subscriptions follow: the channel stays subscribed
    await async_wait_for(lambda: again.books, what="the last value for the topic made again")
    assert again.books == [(BOOK, 5)]
    await publish(rig.redis, snapshot(6))
    await async_wait_for(lambda: len(again.books) == 2, what="the live book")


@pytest.mark.asyncio
async def test_resubscribing_some_channels_unprimes_only_those(rig: Rig) -> None:
    book_eth = b"md:book:ETH-USD"
    sink = Sink()
    rig.hub.attach(sink)
    rig.hub.want(sink, "BTC-USD")
    rig.hub.want(sink, "ETH-USD")
    await async_wait_for(lambda: all(rig.hub.topic(c).primed for c in (BOOK, book_eth)), what="priming")  # type: ignore[union-attr]
    rig.hub.resubscribing([book_eth, b"md:book:NOT-WANTED"])
    assert rig.hub.topic(BOOK).primed and not rig.hub.topic(book_eth).primed  # type: ignore[union-attr]
    rig.hub.resubscribing()
    assert not rig.hub.topic(BOOK).primed  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_in_a_cluster_a_dead_primary_heals_its_channels_and_leaves_the_others_alone() -> None:
    cluster = FakeCluster(3)
    btc, sol = CLUSTER_KEYS.book("BTC-USD").encode(), CLUSTER_KEYS.book("SOL-USD").encode()
    dead, spare = cluster.node_of(btc), next(n for n in cluster.nodes if n not in (cluster.node_of(btc), cluster.node_of(sol)))
    assert cluster.node_of(sol) is not dead
    cluster.data[CLUSTER_KEYS.instruments.encode()] = schema.encode_instruments(DEFAULT_INSTRUMENTS)
    cluster.data[CLUSTER_KEYS.heartbeat.encode()] = schema.encode_heartbeat(NOW_US, "test")
    cluster.data[btc], cluster.data[sol] = snapshot(5), snapshot(7, SOL)
    settings = BridgeSettings(redis_url="redis://fake", redis_cluster=True, stale_after=0.2)
    wiring = Wiring(redis=cluster, open_pubsub=cluster.open_pubsub, rng=random.Random(1), clock=lambda: NOW_US)
    async with Hub(settings, Stats(), wiring) as hub:
        await async_wait_for(lambda: hub.feed.live, what="the hub's shards")
        sink = Sink()
        hub.attach(sink)
        hub.want(sink, "BTC-USD")
        hub.want(sink, "SOL-USD")
        await async_wait_for(lambda: len(sink.books) == 2, what="both last values")
        assert sorted(sink.books) == sorted([(btc, 5), (sol, 7)]) and hub.subscriptions == 2
        dead.die()
        await async_wait_for(lambda: not hub.topic(btc).primed, what="the dead shard's channel unprimed")  # type: ignore[union-attr]
        assert hub.topic(sol).primed  # type: ignore[union-attr]
        cluster.node_of(sol).publish(sol, snapshot(8, SOL))
        await async_wait_for(lambda: (sol, 8) in sink.books, what="the other shard's books meanwhile")
        cluster.data[btc] = snapshot(6)  # what the promoted replica holds
        cluster.fail_over(dead, spare)
        await async_wait_for(lambda: (btc, 6) in sink.books, timeout=5, what="the healed channel's last value")
        spare.publish(btc, snapshot(9))
        await async_wait_for(lambda: (btc, 9) in sink.books, what="live books from the new primary")
        assert hub.feed.live
