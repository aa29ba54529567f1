"""The hot path without Redis: verification, the (epoch, seq) order, conflation within a batch, replay bounds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from bridge.fanout import JUMP_FLOOR, REFUSE_FOR, Fanout
from bridge.metrics import Stats
from bridge.topic import MIN_REPLAY, Topic
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument
from tests.support import async_wait_for
from tests.unit.bridge_fakes import BOOK, ETH, TRADES, Sink, snapshot, trade

E1, E2 = 1_764_000_000_000_000, 1_764_000_100_000_000  # two simulator runs


@dataclass
class FakeUpstream:
    """The bus as the fanout sees it: listed instruments, a last-value store, a gate to hold GETs in flight."""

    keys: dict[bytes, bytes] = field(default_factory=dict)
    gets: int = 0
    flowing: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    error: OSError | None = None  # raised by the next GET

    def __post_init__(self) -> None:
        self.gate.set()

    def instrument(self, instrument_id: str) -> Instrument | None:
        return next((i for i in DEFAULT_INSTRUMENTS if i.id == instrument_id), None)

    async def last_value(self, channel: bytes) -> bytes | None:
        self.gets += 1
        await self.gate.wait()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.keys.get(channel)

    def books_flowing(self) -> None:
        self.flowing += 1


@dataclass
class Rig:
    fanout: Fanout
    topics: dict[bytes, Topic]
    stats: Stats
    upstream: FakeUpstream

    def want(self, sink: Sink, channel: bytes = BOOK, trades: bool = False, primed: bool = True) -> Topic:
        """`sink` in the topic of `channel`, primed unless told, as the hub leaves it once the bus fetched the last value."""
        topic = self.topics.get(channel)
        if topic is None:
            instrument = channel.decode().rsplit(":", 1)[-1]
            book = f"md:book:{instrument}".encode() if trades else b""
            topic = self.topics[channel] = Topic(channel, trades, instrument, book, primed=primed)
        topic.sinks[sink] = None
        topic.fanout = tuple(topic.sinks)
        return topic

    def start(self, payload: bytes, channel: bytes = BOOK) -> None:
        """The last value fetched after subscribing: the first epoch adopted."""
        self.upstream.keys[channel] = payload
        self.fanout.fetched_book(channel, payload)

    def publish(self, payload: bytes, channel: bytes = BOOK) -> None:
        """What the ingestor's script does: SET the key, then PUBLISH."""
        self.upstream.keys[channel] = payload
        self.fanout.deliver(channel, payload)

    async def checked(self, channel: bytes = BOOK) -> None:
        """Until no check against the last-value key is in flight on `channel`."""
        await async_wait_for(lambda: not self.topics[channel].checking, interval=0.001, what="the check to answer")


@pytest_asyncio.fixture
async def rig() -> Rig:
    topics: dict[bytes, Topic] = {}
    stats = Stats()
    upstream = FakeUpstream()
    return Rig(Fanout(topics, stats, asyncio.get_running_loop(), upstream), topics, stats, upstream)


# -- the order within an epoch ---------------------------------------------------------


@pytest.mark.asyncio
async def test_same_epoch_older_or_equal_seqs_are_dropped_as_stale(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.start(snapshot(9, epoch=E1))
    for seq in (10, 10, 8, 11):
        rig.publish(snapshot(seq, epoch=E1))
    assert sink.seqs() == [9, 10, 11]
    assert rig.stats.stale == 2
    assert rig.upstream.gets == 0, "books moving forward within the epoch cost no round trip"
    assert rig.upstream.flowing == 2, "live books (not the fetched one) tell the feed it flows"


@pytest.mark.asyncio
async def test_a_huge_seq_is_checked_and_does_not_stop_the_real_books(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.start(snapshot(10, epoch=E1))
    # A real book re-sent with a huge seq: its checksum is right (it covers levels, not seq).
    rig.fanout.deliver(BOOK, snapshot(10**12, epoch=E1))
    rig.publish(snapshot(11, epoch=E1))  # real books go on while the check runs
    await rig.checked()
    rig.publish(snapshot(12, epoch=E1))
    assert sink.seqs() == [10, 11, 12]
    assert rig.stats.books_rejected["order"] == 1
    # A real jump (the bridge fell far behind) is confirmed by the key and goes on.
    rig.publish(snapshot(12 + 50 * JUMP_FLOOR, epoch=E1))
    await rig.checked()
    assert sink.seqs()[-1] == 12 + 50 * JUMP_FLOOR
    assert rig.upstream.gets == 2


# -- another epoch ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_forged_book_of_another_epoch_without_the_key_is_dropped(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.start(snapshot(100, epoch=E1))
    for forged in (E2, 10**18, 0):  # larger, huge, smaller: epochs are never compared by size
        rig.fanout.deliver(BOOK, snapshot(5, epoch=forged))  # PUBLISH only: the key still holds E1
        await rig.checked()
    assert sink.places() == [(E1, 100, False)]
    assert rig.stats.books_rejected["order"] == 3
    gets = rig.upstream.gets
    rig.fanout.deliver(BOOK, snapshot(6, epoch=0))  # the same forged epoch again, at once
    assert rig.upstream.gets == gets, f"an epoch the key did not hold is refused for {REFUSE_FOR} s without asking again"
    assert rig.stats.books_rejected["order"] == 4
    rig.publish(snapshot(101, epoch=E1))
    assert sink.seqs() == [100, 101]


@pytest.mark.asyncio
async def test_a_real_new_epoch_is_adopted_at_once_and_marked_reset(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.want(sink, TRADES, trades=True)
    rig.start(snapshot(500, epoch=E1))
    rig.upstream.gate.clear()  # hold the GET in flight
    rig.publish(snapshot(0, epoch=E2))  # the simulator restarted: its seqs start again
    assert rig.topics[BOOK].checking
    rig.publish(snapshot(1, epoch=E2))
    rig.publish(snapshot(2, epoch=E2))  # newer books of the candidate wait, latest only
    rig.fanout.deliver(BOOK, snapshot(501, epoch=E1))  # in flight from the old run: still its order until E2 is confirmed
    await asyncio.sleep(0.01)
    assert rig.upstream.gets == 1, "one check in flight per instrument"
    rig.upstream.gate.set()
    await rig.checked()
    assert sink.places() == [(E1, 500, False), (E1, 501, False), (E2, 2, True)]
    assert rig.topics[BOOK].epoch == E2
    rig.publish(snapshot(3, epoch=E2))
    rig.fanout.deliver(TRADES, trade(4, epoch=E2))
    rig.fanout.deliver(TRADES, trade(5, epoch=E2))
    assert sink.places()[3:] == [(E2, 3, False), (E2, 4, False), (E2, 5, False)]
    assert rig.stats.stale == 0 and sum(rig.stats.books_rejected.values()) == 0


@pytest.mark.asyncio
async def test_a_check_that_cannot_reach_redis_refuses_nothing(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.start(snapshot(9, epoch=E1))
    rig.upstream.error = ConnectionError("redis went away")
    rig.publish(snapshot(0, epoch=E2))
    await rig.checked()
    assert rig.stats.books_rejected["order"] == 1 and rig.topics[BOOK].epoch == E1
    rig.publish(snapshot(1, epoch=E2))  # asks again at once: the epoch was not refused
    await rig.checked()
    assert sink.places() == [(E1, 9, False), (E2, 1, True)]


@pytest.mark.asyncio
async def test_an_old_run_straggler_after_adoption_is_dropped(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.start(snapshot(7, epoch=E2))
    rig.fanout.deliver(BOOK, snapshot(90_000, epoch=E1))  # late, from the run before: the key holds E2
    await rig.checked()
    rig.publish(snapshot(8, epoch=E2))
    assert sink.places() == [(E2, 7, False), (E2, 8, False)]
    assert rig.stats.books_rejected["order"] == 1


@pytest.mark.asyncio
async def test_trades_of_an_epoch_not_adopted_are_dropped(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.want(sink, TRADES, trades=True)
    rig.start(snapshot(10, epoch=E1))
    rig.fanout.deliver(TRADES, trade(11, epoch=E1))
    rig.fanout.deliver(TRADES, trade(3, epoch=E2))  # the new run's trade, before its books are adopted
    rig.fanout.deliver(TRADES, trade(11, epoch=E1))
    assert [m.seq for m in sink.got if m.payload.startswith(b'{"v":1,"type":"trade"')] == [11]
    assert rig.stats.stale == 2
    rig.publish(snapshot(4, epoch=E2))
    await rig.checked()
    rig.fanout.deliver(TRADES, trade(5, epoch=E2))
    rig.fanout.deliver(TRADES, trade(12, epoch=E1))  # the old run's, now that E2 is adopted
    assert sink.places()[-2:] == [(E2, 4, True), (E2, 5, True)], "the first trade of the new epoch is a reset too"
    assert [m.epoch for m in rig.topics[TRADES].recent] == [E1, E2]


@pytest.mark.asyncio
async def test_live_books_before_the_fetch_wait_for_it(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink, primed=False)
    rig.fanout.deliver(BOOK, snapshot(5, epoch=E1))  # raced ahead of the fetch of the last value
    assert sink.books == [] and rig.upstream.gets == 0
    rig.fanout.fetched_book(BOOK, snapshot(3, epoch=E1))
    assert sink.places() == [(E1, 3, False), (E1, 5, False)]


@pytest.mark.asyncio
async def test_a_first_book_without_a_fetched_value_is_checked(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink, primed=False)
    rig.fanout.fetched_book(BOOK, None)  # nothing published yet
    rig.fanout.deliver(BOOK, snapshot(1, epoch=E1))  # PUBLISH alone: no key behind it
    await rig.checked()
    assert sink.books == [] and rig.stats.books_rejected["order"] == 1
    rig.publish(snapshot(2, epoch=E2))
    await rig.checked()
    assert sink.places() == [(E2, 2, False)]


# -- what proves itself ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_books_that_do_not_prove_themselves_are_counted_by_reason(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.start(snapshot(1))
    rig.fanout.deliver(BOOK, snapshot(2, ETH))
    rig.fanout.deliver(BOOK, snapshot(3, checksum=12345))
    rig.fanout.deliver(BOOK, b"hello")
    rig.fanout.deliver(BOOK, trade(4))
    assert rig.stats.books_rejected == {"channel": 2, "order": 0, "checksum": 1, "malformed": 1}
    assert rig.stats.bad_messages == 1
    assert sink.seqs() == [1]


@pytest.mark.asyncio
async def test_garbage_is_counted_and_dropped(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.want(sink, TRADES, trades=True)
    good = snapshot(7)
    for junk in (b"hello", b'{"v":1,"type":"book","seq":"x"}', good[:-1], b'{"v":2,' + good[7:], good[:-1] + b' ' * 70_000 + b"}", good[:-2] + b"\xff}"):
        rig.fanout.deliver(BOOK, junk)
    assert rig.stats.bad_messages == 6 and rig.stats.books_rejected["malformed"] == 6
    rig.fanout.deliver(TRADES, trade(3, inst=ETH))  # another instrument's trade
    rig.fanout.deliver(TRADES, b'{"v":1,"type":"trade"}')
    assert rig.stats.bad_messages == 8
    rig.start(good)
    assert sink.seqs() == [7]


@pytest.mark.asyncio
async def test_a_batch_sends_only_the_newest_book_per_channel_and_every_trade(rig: Rig) -> None:
    eth_book = b"md:book:ETH-USD"
    sink = Sink()
    rig.want(sink)
    rig.want(sink, TRADES, trades=True)
    rig.want(sink, eth_book)
    rig.start(snapshot(19))
    rig.start(snapshot(29, ETH), eth_book)
    rig.fanout.deliver_batch([
        (BOOK, snapshot(20)), (TRADES, trade(5)), (eth_book, snapshot(30, ETH)), (BOOK, snapshot(21)),
        (TRADES, trade(6)), (BOOK, snapshot(22)), (b"md:book:SOL-USD", snapshot(1)),
    ])
    assert sink.books[2:] == [(eth_book, 30), (BOOK, 22)]
    assert [s for _, s in sink.trades] == [5, 6]
    assert rig.stats.bus_conflated == 2
    assert rig.stats.messages_in == 7


@pytest.mark.asyncio
async def test_a_bad_newest_book_in_a_batch_does_not_hide_the_good_one_before_it(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.start(snapshot(10))
    rig.fanout.deliver_batch([(BOOK, snapshot(11)), (BOOK, snapshot(12)), (BOOK, snapshot(13, checksum=1))])
    assert sink.seqs() == [10, 12]
    assert rig.stats.bus_conflated == 1 and rig.stats.books_rejected["checksum"] == 1


# -- trades replay ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_replay_keeps_as_many_trades_as_the_list_held(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.start(snapshot(1))
    topic = rig.want(sink, TRADES, trades=True)
    kept = MIN_REPLAY + 30
    rig.fanout.fetched_trades(TRADES, [trade(seq) for seq in range(kept, 0, -1)])  # newest first, as Redis keeps them
    assert [s for _, s in sink.trades] == list(range(1, kept + 1))
    rig.fanout.deliver(TRADES, trade(kept + 1))
    assert [m.seq for m in topic.recent] == list(range(2, kept + 2))


@pytest.mark.asyncio
async def test_the_replay_keeps_only_the_adopted_epoch(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink)
    rig.start(snapshot(1, epoch=E2))
    rig.want(sink, TRADES, trades=True, primed=False)
    rig.fanout.deliver(TRADES, trade(9, epoch=E2))  # live, before the history came
    rig.fanout.fetched_trades(TRADES, [trade(8, epoch=E2), trade(7, epoch=E2), trade(400, epoch=E1)])
    assert [s for _, s in sink.trades] == [7, 8, 9]


@pytest.mark.asyncio
async def test_a_list_still_filling_does_not_shrink_the_replay(rig: Rig) -> None:
    rig.want(Sink())
    rig.start(snapshot(1))
    topic = rig.want(Sink(), TRADES, trades=True)
    rig.fanout.fetched_trades(TRADES, [trade(2), trade(1)])
    for seq in range(3, MIN_REPLAY + 3):
        rig.fanout.deliver(TRADES, trade(seq))
    assert [m.seq for m in topic.recent] == list(range(3, MIN_REPLAY + 3))
