"""A socket's LatestSlot: latest-only slots, per-channel order, bounded state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import pytest_asyncio

from bridge.frames import Message
from bridge.latest_slot import MAX_CONTROL, TRADES_BACKLOG, LatestSlot
from bridge.metrics import Stats
from tests.support import async_wait_for

KEY = b"md:book:BTC-USD"
TRADES = b"md:trades:BTC-USD"


class GatedSend:
    """An ASGI send that blocks while the gate is shut, like a client that stopped reading."""

    def __init__(self) -> None:
        self.events: list[MutableMapping[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, event: MutableMapping[str, Any]) -> None:
        await self.gate.wait()
        self.events.append(event)

    def seqs(self) -> list[int]:
        return [orjson.loads(e["text"]).get("seq", -1) for e in self.events if e["type"] == "websocket.send"]


def msg(seq: int, reset: bool = False, epoch: int = 0) -> Message:
    return Message.of(b'{"v":1,"type":"book","seq":%d}' % seq, seq, reset=reset, epoch=epoch)


@dataclass
class Running:
    """A slot on plain ASGI send, its sender task running."""

    send: GatedSend
    stats: Stats
    slot: LatestSlot
    sender: asyncio.Task[None]

    async def blocked(self) -> None:
        """Wait until the sender is inside a send that does not return."""
        await async_wait_for(lambda: self.slot.stuck_since is not None, interval=0.005, what="the send to block")

    async def drained(self) -> None:
        await async_wait_for(lambda: self.slot.pending == 0 and self.slot.stuck_since is None, interval=0.005,
                             what="the pending messages to go out")


@pytest_asyncio.fixture
async def running() -> AsyncIterator[Running]:
    send, stats = GatedSend(), Stats()
    slot = LatestSlot(send, stats, raw=False)
    sender = asyncio.create_task(slot.run())
    yield Running(send, stats, slot, sender)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_blocked_socket_keeps_only_the_newest_book(running: Running) -> None:
    send, stats, slot = running.send, running.stats, running.slot
    send.gate.clear()
    slot.offer(KEY, msg(1))
    await running.blocked()
    for seq in range(2, 51):
        slot.offer(KEY, msg(seq))
    assert slot.pending == 1
    assert stats.conflated == 48
    send.gate.set()
    await running.drained()
    assert send.seqs() == [1, 50]
    assert slot.pending == 0 and slot.stuck_since is None
    assert stats.messages_out == 2


@pytest.mark.asyncio
async def test_never_an_older_or_equal_seq_unless_a_new_epoch_resets(running: Running) -> None:
    send, stats, slot = running.send, running.stats, running.slot
    # Another epoch goes only as a reset (the fanout confirmed it): seqs are never compared across epochs.
    for m in (msg(5, epoch=1), msg(5, epoch=1), msg(3, epoch=1), msg(6, epoch=1), msg(9, epoch=2),
              msg(1, reset=True, epoch=2), msg(2, epoch=2), msg(7, epoch=1)):
        slot.offer(KEY, m)
        await asyncio.sleep(0)  # let the sender take each one before the next is offered
    await async_wait_for(lambda: len(send.events) >= 4 and slot.pending == 0, interval=0.005,
                         what="four books sent")
    assert send.seqs() == [5, 6, 1, 2]
    assert stats.stale == 4


@pytest.mark.asyncio
async def test_trades_queue_but_stay_bounded(running: Running) -> None:
    send, stats, slot = running.send, running.stats, running.slot
    send.gate.clear()
    slot.offer_trade(TRADES, msg(0))
    await running.blocked()
    for seq in range(1, 201):
        slot.offer_trade(TRADES, msg(seq))
    assert slot.pending == TRADES_BACKLOG
    assert stats.conflated == 200 - TRADES_BACKLOG
    send.gate.set()
    await running.drained()
    assert send.seqs() == [0, *range(201 - TRADES_BACKLOG, 201)]


@pytest.mark.asyncio
async def test_unsubscribing_forgets_the_slot_and_the_seq(running: Running) -> None:
    slot = running.slot
    running.send.gate.clear()
    slot.offer_control(b'{"type":"pong"}')
    await running.blocked()
    slot.offer(KEY, msg(7))
    slot.forget(KEY)
    assert slot.pending == 0
    slot.offer(KEY, msg(7))  # after a resubscribe the same book is welcome again
    assert slot.pending == 1


@pytest.mark.asyncio
async def test_a_client_that_floods_requests_without_reading_is_closed(running: Running) -> None:
    send, stats, slot = running.send, running.stats, running.slot
    send.gate.clear()
    for _ in range(MAX_CONTROL + 2):
        slot.offer_control(b'{"type":"pong"}')
    assert slot.closed and stats.slow_consumer_closes == 1
    await async_wait_for(running.sender.done, interval=0.005, what="the stuck sender to be stopped")
    send.gate.set()
    await slot.finish()
    assert send.events[-1] == {"type": "websocket.close", "code": 1008, "reason": "slow consumer"}


@pytest.mark.asyncio
async def test_close_once() -> None:
    send, stats = GatedSend(), Stats()
    slot = LatestSlot(send, stats, raw=False)
    await slot.close(1001, "bye")
    await slot.close(1001, "bye")
    slot.offer(KEY, msg(1))
    assert send.events == [{"type": "websocket.close", "code": 1001, "reason": "bye"}]
    assert slot.pending == 0


@pytest.mark.asyncio
async def test_a_batched_socket_sends_one_frame_per_interval_through_asgi() -> None:
    send, stats = GatedSend(), Stats()
    slot = LatestSlot(send, stats, raw=False, batch=0.05)
    sender = asyncio.create_task(slot.run())
    try:
        send.gate.clear()  # the first batch waits in the send: everything after it gathers
        slot.offer(KEY, msg(1))
        await async_wait_for(lambda: slot.stuck_since is not None, interval=0.005, what="the first batch to block")
        for seq in range(2, 6):
            slot.offer(KEY, msg(seq))
            slot.offer_trade(TRADES, Message.of(b'{"v":1,"type":"trade","seq":%d}' % seq, seq))
        send.gate.set()
        await async_wait_for(lambda: len(send.events) == 2, interval=0.005, what="the second batch")
        first, second = (orjson.loads(e["text"])["messages"] for e in send.events)
        assert [m["seq"] for m in first] == [1]
        assert [(m["type"], m["seq"]) for m in second] == [("book", 5)] + [("trade", s) for s in range(2, 6)]
        assert stats.messages_out == 6 and stats.conflated == 3
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


def delta(seq: int, prev: int, epoch: int = 0, size: int = 100, cap: int = 950) -> Message:
    body = b'{"v":1,"type":"delta","seq":%d,"prev_seq":%d,"pad":"' % (seq, prev)
    payload = body + b"x" * max(0, size - len(body) - 2) + b'"}'
    return Message(seq, payload, payload, 0.0, False, epoch, prev_seq=prev, cap=cap)


@pytest.mark.asyncio
async def test_deltas_go_only_on_top_of_the_book_the_socket_holds(running: Running) -> None:
    send, stats, slot = running.send, running.stats, running.slot
    slot.offer_delta(KEY, delta(1, 0))
    await asyncio.sleep(0)
    assert slot.pending == 0, "a socket holding no book cannot use a delta"
    for m in (msg(1, epoch=3), delta(2, 1, epoch=3), delta(4, 3, epoch=3), delta(3, 2, epoch=1), delta(3, 2, epoch=3)):
        if m.prev_seq < 0:
            slot.offer(KEY, m)
        else:
            slot.offer_delta(KEY, m)
        await running.drained()
    slot.offer(KEY, msg(3, epoch=3))  # the snapshot read right after the delta that brought it: no news
    slot.offer(KEY, msg(4, epoch=3))  # a snapshot whose delta did not come: taken
    slot.offer_delta(KEY, delta(5, 4, epoch=3))
    await running.drained()
    assert send.seqs() == [1, 2, 3, 4, 5]
    assert stats.stale == 0


@pytest.mark.asyncio
async def test_a_slow_reader_gets_the_snapshot_instead_of_deltas_that_outweigh_it(running: Running) -> None:
    send, stats, slot = running.send, running.stats, running.slot
    slot.offer(KEY, msg(1))
    await running.drained()
    send.gate.clear()
    slot.offer_delta(KEY, delta(2, 1))
    await running.blocked()  # the sender holds delta 2, stuck in its send
    for seq in range(3, 12):  # 9 deltas of 100 bytes queue under the 950 of a snapshot
        slot.offer_delta(KEY, delta(seq, seq - 1))
        slot.offer(KEY, msg(seq))
    assert slot.pending == 9 and stats.conflated == 0
    slot.offer_delta(KEY, delta(12, 11))  # one more outweighs the snapshot: they all go
    assert slot.pending == 0 and stats.conflated == 9
    slot.offer_delta(KEY, delta(13, 12))
    assert slot.pending == 0, "no delta until a snapshot"
    slot.offer(KEY, msg(12))  # the snapshot read right after delta 12
    slot.offer_delta(KEY, delta(13, 12))
    send.gate.set()
    await running.drained()
    assert send.seqs() == [1, 2, 12, 13]


@pytest.mark.asyncio
async def test_resync_sends_the_newest_snapshot_at_once_but_never_one_behind_a_delta_given(running: Running) -> None:
    send, slot = running.send, running.slot
    slot.offer(KEY, msg(1))
    slot.offer_delta(KEY, delta(2, 1))
    await running.drained()
    slot.resync(KEY, msg(2))
    await running.drained()
    assert send.seqs() == [1, 2, 2], "the snapshot of the book held goes again: the client asked"
    slot.offer_delta(KEY, delta(3, 2))
    await running.drained()
    slot.resync(KEY, msg(2))  # delta 3 went out before its snapshot was read
    await running.drained()
    assert send.seqs() == [1, 2, 2, 3]
    slot.offer_delta(KEY, delta(4, 3))
    await running.drained()
    assert send.seqs() == [1, 2, 2, 3], "no delta until the snapshot"
    slot.offer(KEY, msg(3))
    await running.drained()
    assert send.seqs() == [1, 2, 2, 3, 3]
    slot.resync(KEY, None)  # nothing forwarded yet: nothing to send
    assert slot.pending == 0
