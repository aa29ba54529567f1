"""The hub's logic against fakeredis and fake sockets: ordering, subscriptions, last values, feed state."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import fakeredis
import orjson
import pytest
import pytest_asyncio

from bridge.bus import backoff, feed_reason
from bridge.hub import RESET_AFTER, Hub
from bridge.metrics import Stats
from bridge.sockets import Message
from marketdata import schema
from marketdata.book import OrderBook
from marketdata.errors import MessageError, UnknownInstrument
from marketdata.instruments import DEFAULT_INSTRUMENTS, select
from marketdata.settings import BridgeSettings
from tests.support import async_wait_for

BTC, ETH = select(["BTC-USD", "ETH-USD"])
BOOK = b"md:book:BTC-USD"
TRADES = b"md:trades:BTC-USD"
NOW = 1_800_000_000.0


def snapshot(seq: int, inst=BTC) -> bytes:  # type: ignore[no-untyped-def]
    book = OrderBook(inst.id)
    mid = inst.reference_ticks
    book.reset(seq, [(mid - 1 - i, 3 + i) for i in range(10)], [(mid + 1 + i, 2 + i) for i in range(10)])
    return schema.encode_book(inst, book, 25, ts=seq, pts=seq, checksum=book.checksum())


def trade(seq: int) -> bytes:
    return schema.encode_trade(BTC, seq, ts=seq, price=BTC.reference_ticks, size=5, aggressor=0)


@dataclass(eq=False)
class Sink:
    """Records what the hub hands a socket."""

    books: list[tuple[bytes, int]] = field(default_factory=list)
    trades: list[tuple[bytes, int]] = field(default_factory=list)
    feeds: list[dict[str, object]] = field(default_factory=list)
    forgotten: list[bytes] = field(default_factory=list)
    stuck_since: float | None = None
    slow_closed: bool = False
    closed: int | None = None

    def offer(self, key: bytes, msg: Message) -> None:
        self.books.append((key, msg.seq))

    def offer_trade(self, key: bytes, msg: Message) -> None:
        self.trades.append((key, msg.seq))

    def offer_feed(self, msg: Message) -> None:
        self.feeds.append(orjson.loads(msg.payload))

    def forget(self, key: bytes) -> None:
        self.forgotten.append(key)

    def close_slow(self) -> None:
        self.slow_closed = True

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = code

    def seqs(self) -> list[int]:
        return [seq for _, seq in self.books]


@dataclass
class Rig:
    hub: Hub
    redis: fakeredis.FakeAsyncRedis
    stats: Stats


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    await redis.set("md:instruments", schema.encode_instruments(DEFAULT_INSTRUMENTS))
    await redis.set("md:heartbeat", schema.encode_heartbeat(int(NOW * 1e6), "test"))
    stats = Stats()
    settings = BridgeSettings(redis_url="redis://fake", send_timeout=0.2, stale_after=0.2)  # polls every 0.1 s
    async with Hub(settings, stats, redis=redis, rng=random.Random(1), clock=lambda: NOW) as hub:
        await async_wait_for(lambda: hub.feed.live, what="the hub's pub/sub to connect")
        yield Rig(hub, redis, stats)
    await redis.aclose()


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
    await rig.redis.publish(BOOK, snapshot(6))
    await async_wait_for(lambda: len(sink.books) == 2, what="the live book")
    assert sink.seqs() == [5, 6]


@pytest.mark.asyncio
async def test_a_late_joiner_gets_the_book_from_memory(rig: Rig) -> None:
    first, late = Sink(), Sink()
    rig.hub.want(first, "BTC-USD")
    await async_wait_for(lambda: rig.hub.subscriptions == 1, what="the subscription")
    await async_wait_for(lambda: rig.hub.topic(BOOK).primed, what="priming")  # type: ignore[union-attr]
    await rig.redis.publish(BOOK, snapshot(9))
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
    await rig.redis.publish(BOOK, snapshot(7))
    await async_wait_for(lambda: (BOOK, 7) in b.books, what="the live book after a left")
    assert (BOOK, 7) not in a.books
    assert rig.hub.subscriptions == 1 and await subscribers(rig.redis, BOOK) == 1
    rig.hub.detach(b)
    await async_wait_for(lambda: rig.hub.subscriptions == 0, what="the unsubscribe")
    assert await subscribers(rig.redis, BOOK) == 0
    assert rig.hub.topic(BOOK) is None
    assert BOOK in a.forgotten and BOOK in b.forgotten


@pytest.mark.asyncio
async def test_older_or_equal_seqs_are_dropped_and_a_restart_is_taken(rig: Rig) -> None:
    sink = Sink()
    rig.hub.want(sink, "BTC-USD")
    await async_wait_for(lambda: rig.hub.subscriptions == 1, what="the subscription")
    await async_wait_for(lambda: rig.hub.topic(BOOK).primed, what="priming")  # type: ignore[union-attr]
    for seq in (10, 10, 8, 11):
        rig.hub.deliver(BOOK, snapshot(seq))
    assert sink.seqs() == [10, 11]
    assert rig.stats.stale == 2
    # A restarted simulator counts from 0 again: a few in a row behind the newest is a restart, not noise.
    for seq in range(1, RESET_AFTER + 2):
        rig.hub.deliver(BOOK, snapshot(seq))
    assert sink.seqs() == [10, 11, RESET_AFTER, RESET_AFTER + 1]


@pytest.mark.asyncio
async def test_a_batch_sends_only_the_newest_book_per_channel_and_every_trade(rig: Rig) -> None:
    eth_book = b"md:book:ETH-USD"
    sink = Sink()
    rig.hub.want(sink, "BTC-USD", trades=True)
    rig.hub.want(sink, "ETH-USD")
    await async_wait_for(lambda: rig.hub.subscriptions == 3, what="the subscriptions")
    await async_wait_for(lambda: all(rig.hub.topic(c).primed for c in (BOOK, TRADES, eth_book)), what="priming")  # type: ignore[union-attr]
    rig.hub.deliver_batch([
        (BOOK, snapshot(20)), (TRADES, trade(5)), (eth_book, snapshot(30, ETH)), (BOOK, snapshot(21)),
        (TRADES, trade(6)), (BOOK, snapshot(22)), (b"md:book:SOL-USD", snapshot(1)),
    ])
    assert sink.books == [(eth_book, 30), (BOOK, 22)]
    assert [s for _, s in sink.trades] == [5, 6]
    assert rig.stats.bus_conflated == 2
    assert rig.stats.messages_in == 7


@pytest.mark.asyncio
async def test_a_fetched_value_never_goes_behind_live(rig: Rig) -> None:
    await rig.redis.set(BOOK, snapshot(3))
    sink = Sink()
    rig.hub.want(sink, "BTC-USD")
    rig.hub.deliver(BOOK, snapshot(4))  # live raced ahead of the GET
    await async_wait_for(lambda: rig.hub.topic(BOOK).primed, what="priming")  # type: ignore[union-attr]
    assert sink.seqs() == [4]


@pytest.mark.asyncio
async def test_garbage_is_counted_and_dropped(rig: Rig) -> None:
    sink = Sink()
    rig.hub.want(sink, "BTC-USD")
    await async_wait_for(lambda: rig.hub.subscriptions == 1, what="the subscription")
    good = snapshot(7)
    for junk in (b"hello", b'{"v":1,"type":"book","seq":"x"}', good[:-1], b'{"v":2,' + good[7:], good[:-1] + b' ' * 70_000 + b"}", good[:-2] + b"\xff}"):
        rig.hub.deliver(BOOK, junk)
    assert rig.stats.bad_messages == 6
    rig.hub.deliver(BOOK, good)
    assert sink.seqs() == [7]


@pytest.mark.asyncio
async def test_trades_history_oldest_first_then_live_without_duplicates(rig: Rig) -> None:
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
    rig.hub._bus._instruments_at -= 10  # the refresh-on-miss is rate limited; pretend the last one is old
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


def test_feed_reason() -> None:
    beat = schema.encode_heartbeat(1_000_000_000, "x")
    assert feed_reason(True, True, beat, 1_000_000_000 + 2_000_000, 3.0) is None
    assert feed_reason(True, True, beat, 1_000_000_000 + 4_000_000, 3.0) == "heartbeat stale"
    assert feed_reason(True, True, None, 0, 3.0) == "no heartbeat from the ingestor"
    assert feed_reason(False, True, beat, 0, 3.0) == "redis unreachable"
    assert feed_reason(True, False, beat, 0, 3.0) == "redis pub/sub not connected"
    assert feed_reason(True, True, b"junk", 0, 3.0) is None  # the key lives only while refreshed


def test_backoff_is_capped_exponential_with_jitter() -> None:
    rng = random.Random(3)
    delays = [backoff(n, rng, base=0.1, cap=2.0) for n in range(12)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(1.0 <= d <= 2.0 for d in delays[5:])
    assert len(set(delays[5:])) > 1


def test_schema_reads_the_instrument_list_and_heartbeat() -> None:
    assert schema.decode_instruments(schema.encode_instruments(DEFAULT_INSTRUMENTS))[0].id == "BTC-USD"
    assert schema.heartbeat_ts(schema.encode_heartbeat(42, "x")) == 42
    for bad in (b"nope", b"{}", b'[{"id":"A"}]'):
        with pytest.raises(MessageError):
            schema.decode_instruments(bad)
    with pytest.raises(MessageError):
        schema.heartbeat_ts(b'{"ts":"soon"}')
