"""One WebSocket's outbound side: a latest-only slot per channel, and the task that drains it.

`LatestSlot.offer` is the hot path: when the socket has nothing pending and its
transport takes data, the message's prebuilt frame (bridge.frames) is written at
once, synchronously: no task switch, no copy, nothing built per socket; otherwise
it lands in the socket's slot for that channel, replacing (conflating) whatever
older book waited there, and the socket's one sender task writes it when the client
catches up. A slow client thus gets the newest book when it is ready, never a
backlog, and costs at most one slot per channel (trades, which are events and not
states, keep a short bounded queue).

A socket that asked for deltas gets them in the slot of their instrument's books, each
only on top of exactly the book the socket holds (same epoch, `prev_seq` its seq): they
queue there while they weigh less than the instrument's snapshot, and past that (a slow
reader) they are dropped and the next snapshot, which the bridge reads right after
each delta, goes instead. Any snapshot after what the socket holds is taken too (one
whose delta could not be forwarded), and `resync` sends the newest at once.

The sender drains the slots one of three ways:

- raw: under uvicorn's websockets-sansio, frames go straight to the transport
  (bridge.transport.RawWire);
- ASGI: for every other server, one `send` per message of the event dict built
  once per message and shared by all sockets;
- batch: a socket opened with a batch interval (`/ws?batch_ms=N`) gets no frame
  per message: everything pending goes out every N ms as one frame,
  `{"type":"batch","messages":[...]}`, whose items are the payloads exactly as
  published, in order. Books still conflate in their slots meanwhile, so a browser
  gets at most one book per instrument per interval and one message event instead
  of hundreds: receiving a WebSocket message costs a browser's main thread far
  more than parsing a bigger one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Union

from bridge.frames import Message, batch_body, text_frame
from bridge.metrics import Stats
from bridge.transport import RawWire, Send

log = logging.getLogger(__name__)

TRADES_BACKLOG = 50  # trades a slow socket may have pending per instrument; older ones are dropped
MAX_CONTROL = 32  # control replies a socket may have pending before it counts as a slow consumer
FEED = b"\x00feed"  # slot key of the feed state; never a Redis channel name
SLOW_CONSUMER = "slow consumer"

_Pending = Union[Message, "deque[Message]"]


class LatestSlot:
    """The outbound state of one socket: a latest-only slot per channel and its sender.

    `offer*` are called by the hub for every message, synchronously; `run` is the
    socket's one sender task; `close` and `close_slow` end it.
    """

    __slots__ = ("_send", "_wire", "_stats", "_grace", "_batch", "_seen", "_pending", "_controls", "_wake", "_task",
                 "_unsent_close", "stuck_since", "closed")

    def __init__(self, send: Send, stats: Stats, *, raw: bool = True, grace: float = 5.0, batch: float = 0.0) -> None:
        """`batch`: seconds between batch frames; 0 sends every message as its own frame."""
        self._send = send
        self._batch = batch
        self._wire = RawWire.attach(send) if raw else None
        self._stats = stats
        self._grace = grace  # seconds a closed slow client has to read its close frame
        self._seen: dict[bytes, Message] = {}  # channel -> the last message given to this socket: its place in the order
        self._pending: dict[object, _Pending] = {}  # slot key -> message(s) waiting, in first-offer order
        self._controls = 0  # control keys are ints counting up; this is the next one
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsent_close = False  # a slow-consumer close the server's send could not take yet
        self.stuck_since: float | None = None  # loop time the current blocked send began
        self.closed = False

    @property
    def raw(self) -> bool:
        return self._wire is not None

    @property
    def pending(self) -> int:
        """Messages waiting for this socket (bounded: a slot per channel, a short queue per trades channel)."""
        return sum(len(p) if isinstance(p, deque) else 1 for p in self._pending.values())

    # -- the hot path ------------------------------------------------------------

    def _handled_now(self, key: bytes, msg: Message) -> bool:
        """Drop a message not after what the socket has, or write it at once when nothing
        waits and the socket can take it; False when it must wait in `_pending`.

        After is a higher seq of the same epoch, or anything marked `reset` (the first
        message of a newly adopted epoch: replace, never compare seqs across epochs).
        """
        if self.closed:
            return True
        seen = self._seen
        last = seen.get(key)
        if last is not None and not msg.reset and (msg.seq <= last.seq or msg.epoch != last.epoch):
            if msg.seq != last.seq or last.prev_seq < 0:  # else the socket has that book already, by its delta
                self._stats.stale += 1
            return True
        seen[key] = msg
        if not self._pending and not self._batch and self._wire is not None and self._wire.ready():
            self._wire.write(msg.frame)
            self._stats.messages_out += 1
            return True
        return False

    def offer(self, key: bytes, msg: Message) -> None:
        """A book snapshot for channel `key`: write it now, or replace the one pending."""
        if self._handled_now(key, msg):
            return
        pending = self._pending
        if key in pending:
            self._stats.conflated += 1
        pending[key] = msg
        self._wake.set()

    def offer_delta(self, key: bytes, msg: Message) -> None:
        """A delta for the books in slot `key`: taken only on top of exactly what the socket holds.

        While the messages pending in that slot weigh less than a snapshot (`msg.cap`)
        the delta queues behind them; past that, they are all dropped and the slot waits
        for the snapshot the bridge reads right after this delta.
        """
        if self.closed:
            return
        seen = self._seen
        last = seen.get(key)
        if last is None or last.seq != msg.prev_seq or last.epoch != msg.epoch:
            return  # the snapshot that follows serves this socket
        seen[key] = msg
        pending = self._pending
        item = pending.get(key)
        if item is None:
            if not pending and not self._batch and self._wire is not None and self._wire.ready():
                self._wire.write(msg.frame)
                self._stats.messages_out += 1
                return
            pending[key] = msg
        else:
            chain = item if isinstance(item, deque) else deque((item,))
            if sum(len(m.payload) for m in chain) + len(msg.payload) > msg.cap:
                del pending[key], seen[key]
                self._stats.conflated += len(chain)
                return
            chain.append(msg)
            pending[key] = chain
        self._wake.set()

    def resync(self, key: bytes, latest: Message | None) -> None:
        """The client asks for a snapshot of the books in slot `key`: what waits there is dropped, `latest` goes now.

        Unless the socket was given a delta past `latest` (it is read just before its
        snapshot): then that snapshot, next, goes instead.
        """
        if self.closed:
            return
        last = self._seen.pop(key, None)
        self._pending.pop(key, None)
        if latest is not None and (last is None or last.epoch != latest.epoch or latest.seq >= last.seq):
            self.offer(key, latest)

    def offer_trade(self, key: bytes, msg: Message) -> None:
        """A trade for channel `key`: trades are events, so they queue (bounded), oldest dropped first."""
        if self._handled_now(key, msg):
            return
        pending = self._pending
        queue = pending.get(key)
        if queue is None:
            pending[key] = queue = deque(maxlen=TRADES_BACKLOG)
        elif len(queue) == TRADES_BACKLOG:  # type: ignore[arg-type]
            self._stats.conflated += 1
        queue.append(msg)  # type: ignore[union-attr]
        self._wake.set()

    def offer_feed(self, msg: Message) -> None:
        """The feed state: latest-only, no sequence."""
        self._offer_unordered(FEED, msg)

    def offer_control(self, payload: bytes) -> None:
        """A reply to the client (subscribed, pong, error...), in order with everything else."""
        if self.closed:
            return
        if len(self._pending) >= MAX_CONTROL and sum(isinstance(k, int) for k in self._pending) >= MAX_CONTROL:
            self.close_slow()
            return
        self._controls += 1
        self._offer_unordered(self._controls, Message.of(payload))

    def _offer_unordered(self, key: object, msg: Message) -> None:
        if self.closed:
            return
        pending = self._pending
        if not pending and not self._batch and self._wire is not None and self._wire.ready():
            self._wire.write(msg.frame)
            self._stats.messages_out += 1
            return
        if key in pending:
            self._stats.conflated += 1
        pending[key] = msg
        self._wake.set()

    def forget(self, key: bytes) -> None:
        """The socket no longer wants channel `key`: drop what waits and what it had seen."""
        self._pending.pop(key, None)
        self._seen.pop(key, None)

    # -- the sender ----------------------------------------------------------------

    async def run(self) -> None:
        """Write pending messages whenever there are some, until the socket closes."""
        self._task = asyncio.current_task()
        wake = self._wake
        loop = asyncio.get_running_loop()
        next_batch = 0.0
        try:
            while not self.closed:
                await wake.wait()
                if self._batch:
                    # Let the interval's messages gather (books conflating in their slots).
                    delay = next_batch - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_batch = loop.time() + self._batch
                wake.clear()
                if self._batch:
                    await self._drain_batch()
                elif self._wire is not None:
                    await self._drain_raw(self._wire)
                else:
                    await self._drain_asgi()
        except OSError:  # the client went away (uvicorn's ClientDisconnected is one)
            self.closed = True
        finally:
            self.stuck_since = None

    async def _room(self, wire: RawWire) -> bool:
        """Wait while something is pending and `wire` cannot take it; False when the connection is gone."""
        loop = asyncio.get_running_loop()
        while self._pending and not self.closed and not wire.ready():
            if wire.gone:
                self.closed = True
                self._pending.clear()
                return False
            self.stuck_since = loop.time()
            await wire.wait_writable()
            self.stuck_since = None
        return True

    def _take(self, now: float) -> list[Message]:
        """Everything pending, in order, its wait recorded; the slots are empty after."""
        observe = self._stats.latency.observe
        taken: list[Message] = []
        for item in self._pending.values():
            for msg in (item,) if isinstance(item, Message) else item:
                taken.append(msg)
                if msg.received:  # control replies carry no arrival time
                    observe(now - msg.received)
        self._pending.clear()
        return taken

    async def _drain_raw(self, wire: RawWire) -> None:
        loop = asyncio.get_running_loop()
        while await self._room(wire) and self._pending and not self.closed:
            # Everything pending goes out in one synchronous pass: nothing can slip in between.
            taken = self._take(loop.time())
            for msg in taken:
                wire.write(msg.frame)
            self._stats.messages_out += len(taken)

    async def _drain_batch(self) -> None:
        """Everything pending as one batch frame, once the socket can take it."""
        wire = self._wire
        if wire is not None and not await self._room(wire):
            return
        if not self._pending or self.closed:
            return
        now = asyncio.get_running_loop().time()
        payloads = [msg.payload for msg in self._take(now)]
        body = batch_body(payloads)
        if wire is not None:
            wire.write(text_frame(body))
        else:
            self.stuck_since = now
            await self._send({"type": "websocket.send", "text": body.decode()})
            self.stuck_since = None
        self._stats.messages_out += len(payloads)

    async def _drain_asgi(self) -> None:
        pending = self._pending
        loop = asyncio.get_running_loop()
        send = self._send
        observe = self._stats.latency.observe
        while pending and not self.closed:
            key = next(iter(pending))
            item = pending.pop(key)
            for msg in (item,) if isinstance(item, Message) else tuple(item):
                self.stuck_since = loop.time()
                await send(msg.event())
                self.stuck_since = None
                self._stats.messages_out += 1
                if msg.received:
                    observe(loop.time() - msg.received)

    # -- closing -------------------------------------------------------------------

    def close_slow(self) -> None:
        """Close a socket stuck in a send: 1008 "slow consumer", without waiting for the client."""
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self._stats.slow_consumer_closes += 1
        if self._wire is not None:
            self._wire.close_now(1008, SLOW_CONSUMER, self._grace)
        else:
            # The sender is stuck inside the server's send; stop it. The endpoint then tries
            # a close frame with a short deadline (see `finish`).
            self._unsent_close = True
            if self._task is not None:
                self._task.cancel()

    async def close(self, code: int, reason: str = "") -> None:
        """Close the socket with `code` unless it is closed or closing already."""
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self._wake.set()
        if self._wire is not None:
            if self._wire.gone:
                return
            if not self._wire.ready():
                self._wire.close_now(code, reason, self._grace)
                return
        await self._close_event(code, reason)

    async def finish(self, timeout: float = 0.5) -> None:
        """After a slow-consumer close under a non-raw server: try the close frame, briefly."""
        if self._unsent_close:
            self._unsent_close = False
            closing = asyncio.ensure_future(self._close_event(1008, SLOW_CONSUMER))
            try:
                await asyncio.wait((closing,), timeout=timeout)  # not wait_for: it can swallow a cancellation
            finally:
                closing.cancel()

    async def _close_event(self, code: int, reason: str) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except (OSError, RuntimeError):  # gone already, or the server saw a close from us
            pass
