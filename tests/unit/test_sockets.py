"""A socket's Outbox: latest-only slots, per-channel order, bounded state, framing."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest
from websockets.frames import Frame, Opcode

from bridge.metrics import Stats
from bridge.sockets import MAX_CONTROL, TRADES_BACKLOG, Message, Outbox, text_frame
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


def msg(seq: int, reset: bool = False) -> Message:
    return Message.of(b'{"v":1,"type":"book","seq":%d}' % seq, seq, reset=reset)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70_000])
def test_text_frame_is_what_websockets_would_send(size: int) -> None:
    payload = b"x" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


@pytest.mark.asyncio
async def test_a_blocked_socket_keeps_only_the_newest_book() -> None:
    send, stats = GatedSend(), Stats()
    outbox = Outbox(send, stats, raw=False)
    sender = asyncio.create_task(outbox.run())
    try:
        send.gate.clear()
        outbox.offer(KEY, msg(1))
        # The sender is inside a send that does not return.
        await async_wait_for(lambda: outbox.stuck_since is not None, interval=0.005, what="the send to block")
        for seq in range(2, 51):
            outbox.offer(KEY, msg(seq))
        assert outbox.pending == 1
        assert stats.conflated == 48
        send.gate.set()
        await async_wait_for(lambda: outbox.pending == 0 and outbox.stuck_since is None, interval=0.005,
                             what="the pending book to go out")
        assert send.seqs() == [1, 50]
        assert outbox.pending == 0 and outbox.stuck_since is None
        assert stats.messages_out == 2
    finally:
        sender.cancel()


@pytest.mark.asyncio
async def test_never_an_older_or_equal_seq_unless_the_feed_restarted() -> None:
    send, stats = GatedSend(), Stats()
    outbox = Outbox(send, stats, raw=False)
    sender = asyncio.create_task(outbox.run())
    try:
        for m in (msg(5), msg(5), msg(3), msg(6), msg(1, reset=True), msg(2)):
            outbox.offer(KEY, m)
            await asyncio.sleep(0)  # let the sender take each one before the next is offered
        await async_wait_for(lambda: len(send.events) >= 4 and outbox.pending == 0, interval=0.005,
                             what="four books sent")
        assert send.seqs() == [5, 6, 1, 2]
        assert stats.stale == 2
    finally:
        sender.cancel()


@pytest.mark.asyncio
async def test_trades_queue_but_stay_bounded() -> None:
    send, stats = GatedSend(), Stats()
    outbox = Outbox(send, stats, raw=False)
    sender = asyncio.create_task(outbox.run())
    try:
        send.gate.clear()
        outbox.offer_trade(TRADES, msg(0))
        await async_wait_for(lambda: outbox.stuck_since is not None, interval=0.005, what="the send to block")
        for seq in range(1, 201):
            outbox.offer_trade(TRADES, msg(seq))
        assert outbox.pending == TRADES_BACKLOG
        assert stats.conflated == 200 - TRADES_BACKLOG
        send.gate.set()
        await async_wait_for(lambda: outbox.pending == 0 and outbox.stuck_since is None, interval=0.005,
                             what="the queued trades to go out")
        assert send.seqs() == [0, *range(201 - TRADES_BACKLOG, 201)]
    finally:
        sender.cancel()


@pytest.mark.asyncio
async def test_unsubscribing_forgets_the_slot_and_the_seq() -> None:
    send, stats = GatedSend(), Stats()
    outbox = Outbox(send, stats, raw=False)
    sender = asyncio.create_task(outbox.run())
    try:
        send.gate.clear()
        outbox.offer_control(b'{"type":"pong"}')
        await async_wait_for(lambda: outbox.stuck_since is not None, interval=0.005, what="the send to block")
        outbox.offer(KEY, msg(7))
        outbox.forget(KEY)
        assert outbox.pending == 0
        outbox.offer(KEY, msg(7))  # after a resubscribe the same book is welcome again
        assert outbox.pending == 1
    finally:
        sender.cancel()


@pytest.mark.asyncio
async def test_a_client_that_floods_requests_without_reading_is_closed() -> None:
    send, stats = GatedSend(), Stats()
    outbox = Outbox(send, stats, raw=False)
    sender = asyncio.create_task(outbox.run())
    send.gate.clear()
    for _ in range(MAX_CONTROL + 2):
        outbox.offer_control(b'{"type":"pong"}')
    assert outbox.closed and stats.slow_consumer_closes == 1
    await async_wait_for(sender.done, interval=0.005, what="the stuck sender to be stopped")
    send.gate.set()
    await outbox.finish()
    assert send.events[-1] == {"type": "websocket.close", "code": 1008, "reason": "slow consumer"}


@pytest.mark.asyncio
async def test_close_once() -> None:
    send, stats = GatedSend(), Stats()
    outbox = Outbox(send, stats, raw=False)
    await outbox.close(1001, "bye")
    await outbox.close(1001, "bye")
    outbox.offer(KEY, msg(1))
    assert send.events == [{"type": "websocket.close", "code": 1001, "reason": "bye"}]
    assert outbox.pending == 0


@pytest.mark.asyncio
async def test_a_batched_socket_sends_one_frame_per_interval_through_asgi() -> None:
    send, stats = GatedSend(), Stats()
    outbox = Outbox(send, stats, raw=False, batch=0.05)
    sender = asyncio.create_task(outbox.run())
    try:
        send.gate.clear()  # the first batch waits in the send: everything after it gathers
        outbox.offer(KEY, msg(1))
        await async_wait_for(lambda: outbox.stuck_since is not None, interval=0.005, what="the first batch to block")
        for seq in range(2, 6):
            outbox.offer(KEY, msg(seq))
            outbox.offer_trade(TRADES, Message.of(b'{"v":1,"type":"trade","seq":%d}' % seq, seq))
        send.gate.set()
        await async_wait_for(lambda: len(send.events) == 2, interval=0.005, what="the second batch")
        first, second = (orjson.loads(e["text"])["messages"] for e in send.events)
        assert [m["seq"] for m in first] == [1]
        assert [(m["type"], m["seq"]) for m in second] == [("book", 5)] + [("trade", s) for s in range(2, 6)]
        assert stats.messages_out == 6 and stats.conflated == 3
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
