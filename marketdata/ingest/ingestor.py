"""The ingestor: simulator stream in, verified book snapshots out to Redis.

Two tasks share one `PublishQueue` (marketdata.ingest.publish_queue, the pure part). The reader
awaits gRPC batches and applies each one, whole, to `feed.Books` (which verifies
seq and checksum), noting which books changed. The publisher waits until something
changed, takes everything the reader gathered since its last turn, encodes one
snapshot per changed book and writes PUBLISH + SET of each (and PUBLISH + LPUSH +
LTRIM of the trades) in one pipelined round trip of a few commands (see
`publish_queue.drain_commands`). While that round trip is in flight the reader keeps
applying batches: that is how the stream is drained. At low load a drain is one
event and one publish; at high load drains grow and publishes per second stay
bounded by the Redis round trip, not by the event rate. Every snapshot is taken at
the end of a batch, where the simulator sends a checksum, so only verified books
are published.

A gap or checksum mismatch invalidates every book and resubscribes: fresh
snapshots replace the books. A lost simulator or Redis is retried with capped
exponential backoff with jitter; the heartbeat key is refreshed only while the
simulator stream is live. Each connection starts a new queue whose books are
the simulator's fresh snapshots, so after a restart (a new epoch, logged once)
what is published is the new run's books, whose seqs start again, never a merge
with the old run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterable

import grpc
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from marketdata import schema
from marketdata.backoff import Backoff
from marketdata.clock import now_us
from marketdata.errors import (
    BookError,
    ChecksumMismatch,
    StreamEnded,
    UnknownInstrument,
)
from marketdata.ingest.publish_queue import IngestStats, PublishQueue, drain_commands
from marketdata.instruments import Instrument
from marketdata.logs import redact
from marketdata.settings import IngestSettings
from marketdata.v1 import market_data_pb2 as pb
from marketdata.v1 import market_data_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

REDIS_TIMEOUT = 5.0  # seconds a Redis round trip may take before the connection counts as lost
_timeout = getattr(asyncio, "timeout", None) or (lambda _delay: contextlib.nullcontext())  # Python 3.10: unbounded
_GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def select_instruments(listed: Iterable[pb.Instrument], wanted: tuple[str, ...]) -> list[Instrument]:
    """The simulator's instruments, or those of `wanted` in that order; UnknownInstrument names one not listed."""
    by_id = {
        i.id: Instrument(i.id, i.kind, i.description, i.tick_size, i.lot_size, i.price_decimals, i.size_decimals)
        for i in listed
    }
    if not wanted:
        return list(by_id.values())
    missing = [w for w in wanted if w not in by_id]
    if missing:
        raise UnknownInstrument(missing[0])
    return [by_id[w] for w in dict.fromkeys(wanted)]


class Ingestor:
    """Subscribes to the simulator, rebuilds and verifies books, publishes snapshots to Redis."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.keys = schema.Keys(settings.prefix)
        self.stats = IngestStats()
        self.queue: PublishQueue | None = None
        self.live = False  # the simulator stream is delivering
        self.epoch: int | None = None  # the simulator's run, from its snapshots; kept across reconnects
        self.source = f"ingest:{socket.gethostname()}:{os.getpid()}"
        self._wakeup = asyncio.Event()
        self._live_event = asyncio.Event()
        self._redis: aredis.Redis | None = None

    async def run(self) -> None:
        """Run until cancelled; raises UnknownInstrument when a requested instrument is not listed."""
        s = self.settings
        # No redis-py retries (we back off ourselves) and no socket_timeout: redis-py sends under
        # asyncio.wait_for when one is set, which on Python 3.11 can swallow a cancellation.
        # REDIS_TIMEOUT bounds each round trip instead.
        self._redis = aredis.Redis.from_url(
            s.redis_url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=None
        )
        log.info("publishing to Redis %s (prefix %r, depth %d, coalesce %s)", redact(s.redis_url), s.prefix, s.depth, "on" if s.coalesce else "off")
        tasks = [
            asyncio.create_task(self._feed_loop(), name="ingest-feed"),
            asyncio.create_task(self._publish_loop(), name="ingest-publish"),
            asyncio.create_task(self._heartbeat_loop(), name="ingest-heartbeat"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a task ends only by an error worth raising
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._redis.aclose()

    # -- simulator side ------------------------------------------------------

    async def _feed_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._connect(backoff)
                reason = "stream ended"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            except StreamEnded as exc:
                reason = str(exc)
            what = "lost" if self.live else "unavailable"
            self._set_live(False)
            delay = backoff.next()
            self.stats.reconnects += 1
            log.warning("simulator %s %s (%s); reconnecting in %.2f s", self.settings.sim, what, reason, delay)
            await asyncio.sleep(delay)

    async def _connect(self, backoff: Backoff) -> None:
        async with grpc.aio.insecure_channel(self.settings.sim, options=_GRPC_OPTIONS) as channel:
            stub = pb_grpc.MarketDataStub(channel)
            listed = await stub.ListInstruments(pb.ListInstrumentsRequest(), timeout=5.0)
            instruments = select_instruments(listed.instruments, self.settings.instruments)
            log.info("connected to simulator %s (%d instruments listed)", self.settings.sim, len(listed.instruments))
            queue = self.queue = PublishQueue(instruments, self.settings, self.stats)  # fresh books, list due again
            ids = [i.id for i in instruments]
            repairing: set[str] = set()  # instruments whose book broke, until fresh snapshots arrive
            while True:
                call = stub.Subscribe(pb.SubscribeRequest(instruments=ids))
                try:
                    error = await self._stream(call, queue, len(ids), backoff, repairing)
                finally:
                    call.cancel()
                repairing.add(getattr(error, "instrument", "?"))
                self.stats.resubscribes += 1
                log.warning("%s; resubscribing for fresh snapshots", error)

    async def _stream(self, call: grpc.aio.UnaryStreamCall, queue: PublishQueue, n: int, backoff: Backoff, repairing: set[str]) -> BookError:
        """Apply batches until the stream fails (raises) or a book breaks (returns the error)."""
        stats, wakeup = self.stats, self._wakeup
        batch = await call.read()
        log.info("subscribed %d instruments", n)
        while True:
            if batch is grpc.aio.EOF:
                raise StreamEnded("stream ended by the simulator")
            if not self.live:
                self._set_live(True)
                backoff.reset()
            events = batch.events
            try:
                queue.apply(events, now_us())
            except BookError as exc:
                if isinstance(exc, ChecksumMismatch):
                    stats.checksum_mismatches += 1
                else:
                    stats.gaps += 1
                return exc
            stats.events += len(events)
            stats.batches += 1
            epoch = queue.epoch
            if epoch != self.epoch and epoch is not None:
                self._epoch_seen(epoch)
            if repairing and all(map(queue.books.is_ready, repairing)):
                log.info("gap repaired: fresh snapshots of %s", ", ".join(sorted(repairing)))
                repairing.clear()
            wakeup.set()
            batch = await call.read()

    def _epoch_seen(self, epoch: int) -> None:
        if self.epoch is None:
            log.info("simulator epoch %d", epoch)
        else:
            self.stats.epoch_changes += 1
            log.info("simulator epoch changed: %d -> %d", self.epoch, epoch)
        self.epoch = epoch

    def _set_live(self, live: bool) -> None:
        self.live = live
        if live:
            self._live_event.set()
        else:
            self._live_event.clear()

    # -- Redis side ----------------------------------------------------------

    async def _publish_loop(self) -> None:
        assert self._redis is not None
        stats, history = self.stats, self.settings.trades_history
        instruments_key = self.keys.instruments.encode()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            queue = self.queue
            drain = queue.take(now_us()) if queue is not None else None
            if not drain:
                continue
            pipe = self._redis.pipeline(transaction=False)
            for command in drain_commands(drain, instruments_key, history):
                pipe.execute_command(*command)
            try:
                async with _timeout(REDIS_TIMEOUT):
                    await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                await self._redis_lost(exc)
                continue
            stats.drains += 1
            stats.publishes += len(drain.books)
            stats.trade_publishes += drain.trade_count

    async def _redis_lost(self, exc: BaseException) -> None:
        """Retry until Redis answers, then make every book and the instrument list due again."""
        assert self._redis is not None
        backoff = Backoff()
        while True:
            delay = backoff.next()
            log.warning("Redis %s unavailable (%s); retrying in %.2f s", redact(self.settings.redis_url), exc, delay)
            await asyncio.sleep(delay)
            try:
                async with _timeout(REDIS_TIMEOUT):
                    await self._redis.ping()
                break
            except (RedisError, OSError, TimeoutError) as again:
                exc = again
        self.stats.redis_reconnects += 1
        if self.queue is not None:
            self.queue.republish_all()
        log.info("Redis %s reachable again; republishing every book", redact(self.settings.redis_url))
        self._wakeup.set()

    async def _heartbeat_loop(self) -> None:
        assert self._redis is not None
        ttl_ms = max(1, round(self.settings.heartbeat_ttl * 1000))
        interval = self.settings.heartbeat_ttl / 3
        while True:
            await self._live_event.wait()
            try:
                async with _timeout(REDIS_TIMEOUT):
                    await self._redis.set(self.keys.heartbeat, schema.encode_heartbeat(now_us(), self.source), px=ttl_ms)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("heartbeat not written: %s", exc)  # the publisher reports Redis outages
            await asyncio.sleep(interval)


def run(settings: IngestSettings) -> int:
    """Run the ingestor until SIGINT or SIGTERM (uvloop when available); the `marketdata ingest` entry."""

    async def main() -> int:
        task = asyncio.create_task(Ingestor(settings).run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await asyncio.wait([task])
        if task.cancelled():
            log.info("stopped")
            return 0
        task.result()  # raises what ended it (UnknownInstrument: the CLI prints one line)
        return 0

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())
