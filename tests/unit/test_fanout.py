"""The hot path without Redis: checks, the order of books and trades, conflation within a batch, replay bounds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
import pytest_asyncio

from bridge.fanout import RESET_AFTER, Fanout
from bridge.metrics import Stats
from bridge.topic import MIN_REPLAY, Topic
from tests.unit.bridge_fakes import BOOK, ETH, TRADES, Sink, snapshot, trade


@dataclass
class Rig:
    fanout: Fanout
    topics: dict[bytes, Topic]
    stats: Stats

    def want(self, sink: Sink, channel: bytes, trades: bool = False) -> Topic:
        """`sink` in the topic of `channel`, primed, as the hub leaves it once the bus fetched the last value."""
        topic = self.topics.setdefault(channel, Topic(channel, trades, primed=True))
        topic.sinks[sink] = None
        topic.fanout = tuple(topic.sinks)
        return topic


@pytest_asyncio.fixture
async def rig() -> Rig:
    topics: dict[bytes, Topic] = {}
    stats = Stats()
    return Rig(Fanout(topics, stats, asyncio.get_running_loop()), topics, stats)


@pytest.mark.asyncio
async def test_older_or_equal_seqs_are_dropped_and_a_restart_is_taken(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink, BOOK)
    for seq in (10, 10, 8, 11):
        rig.fanout.deliver(BOOK, snapshot(seq))
    assert sink.seqs() == [10, 11]
    assert rig.stats.stale == 2
    # A restarted simulator counts from 0 again: a few in a row behind the newest is a restart, not noise.
    for seq in range(1, RESET_AFTER + 2):
        rig.fanout.deliver(BOOK, snapshot(seq))
    assert sink.seqs() == [10, 11, RESET_AFTER, RESET_AFTER + 1]


@pytest.mark.asyncio
async def test_a_batch_sends_only_the_newest_book_per_channel_and_every_trade(rig: Rig) -> None:
    eth_book = b"md:book:ETH-USD"
    sink = Sink()
    rig.want(sink, BOOK)
    rig.want(sink, TRADES, trades=True)
    rig.want(sink, eth_book)
    rig.fanout.deliver_batch([
        (BOOK, snapshot(20)), (TRADES, trade(5)), (eth_book, snapshot(30, ETH)), (BOOK, snapshot(21)),
        (TRADES, trade(6)), (BOOK, snapshot(22)), (b"md:book:SOL-USD", snapshot(1)),
    ])
    assert sink.books == [(eth_book, 30), (BOOK, 22)]
    assert [s for _, s in sink.trades] == [5, 6]
    assert rig.stats.bus_conflated == 2
    assert rig.stats.messages_in == 7


@pytest.mark.asyncio
async def test_garbage_is_counted_and_dropped(rig: Rig) -> None:
    sink = Sink()
    rig.want(sink, BOOK)
    good = snapshot(7)
    for junk in (b"hello", b'{"v":1,"type":"book","seq":"x"}', good[:-1], b'{"v":2,' + good[7:], good[:-1] + b' ' * 70_000 + b"}", good[:-2] + b"\xff}"):
        rig.fanout.deliver(BOOK, junk)
    assert rig.stats.bad_messages == 6
    rig.fanout.deliver(BOOK, good)
    assert sink.seqs() == [7]


@pytest.mark.asyncio
async def test_the_replay_keeps_as_many_trades_as_the_list_held(rig: Rig) -> None:
    sink = Sink()
    topic = rig.want(sink, TRADES, trades=True)
    kept = MIN_REPLAY + 30
    rig.fanout.fetched_trades(TRADES, [trade(seq) for seq in range(kept, 0, -1)])  # newest first, as Redis keeps them
    assert [s for _, s in sink.trades] == list(range(1, kept + 1))
    rig.fanout.deliver(TRADES, trade(kept + 1))
    assert [m.seq for m in topic.recent] == list(range(2, kept + 2))


@pytest.mark.asyncio
async def test_a_list_still_filling_does_not_shrink_the_replay(rig: Rig) -> None:
    topic = rig.want(Sink(), TRADES, trades=True)
    rig.fanout.fetched_trades(TRADES, [trade(2), trade(1)])
    for seq in range(3, MIN_REPLAY + 3):
        rig.fanout.deliver(TRADES, trade(seq))
    assert [m.seq for m in topic.recent] == list(range(3, MIN_REPLAY + 3))
