"""The ingestor: simulator stream in, verified book snapshots out to Redis, by one of several.

Three tasks share one `PublishQueue` (marketdata.ingest.publish_queue, the pure part). The reader
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

Any number of ingestors may run; the lease task makes one of them the leader (see
marketdata.ingest.lease for the lease, its fence and its timing). A standby runs the
same reader and discards what is due; on taking the lease it republishes every book.
A refused write or renewal (`fenced_writes`) makes a leader a standby at once.
While the leader's stream is down its renewals delete the heartbeat (the bridges report
the feed stale at once); when the stream comes back, the heartbeat is written again
first in the round trip of the first books, so no bridge sees books without it.

A gap or checksum mismatch invalidates every book and resubscribes: fresh
snapshots replace the books. A lost simulator or Redis is retried with capped
exponential backoff with jitter. On Redis Cluster (marketdata.ingest.redis_link) a lost
shard is retried aside while the others publish on; then every book goes out again. Each connection starts a new queue whose books are
the simulator's fresh snapshots, so after a restart (a new epoch, logged once)
what is published is the new run's books, whose seqs start again, never a merge
with the old run's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket

import grpc
from redis.exceptions import ResponseError

from marketdata import schema
from marketdata.backoff import Backoff
from marketdata.clock import now_us
from marketdata.errors import BookError, ChecksumMismatch, StreamEnded
from marketdata.feed import select_instruments
from marketdata.ingest.lease import Fence, Lease, Step, refusal
from marketdata.ingest.metrics import Gauges, MetricsServer
from marketdata.ingest.publish_queue import (
    IngestStats,
    PublishQueue,
    drain_commands,
    tally,
)
from marketdata.ingest.redis_link import ERRORS, REDIS_TIMEOUT, RedisLink, timeout
from marketdata.ingest.slot_writes import slot_commands
from marketdata.logs import Throttled, redact
from marketdata.settings import IngestSettings
from marketdata.v1 import market_data_pb2 as pb
from marketdata.v1 import market_data_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


class Ingestor:
    """Subscribes to the simulator, rebuilds and verifies books, publishes snapshots to Redis while it leads."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.keys = schema.Keys(settings.prefix, cluster=settings.redis_cluster)
        self.stats = IngestStats()
        self.queue: PublishQueue | None = None
        self.live = False  # the simulator stream is delivering
        self.redis_up: bool | None = None  # the last round trip to Redis succeeded (None: none yet)
        self.epoch: int | None = None  # the simulator's run, from its snapshots; kept across reconnects
        # Unique per process and per instance (tests run several in one process): the lease holder's name.
        self.source = f"ingest:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.lease = Lease(self.source, settings.lease)  # `lease.leading`: this one publishes
        self.metrics_port: int | None = None  # where /metrics listens, once running
        self._leader_key = self.keys.leader.encode()
        self._heartbeat_key = self.keys.heartbeat.encode()
        self._lease_keys = (self._leader_key, self.keys.leader_token.encode(), self._heartbeat_key)  # lease, token, heartbeat
        self._heartbeat_ms = max(1, round(settings.heartbeat_ttl * 1000))
        self._down_since = 0.0  # loop time the simulator stream went down
        self._was_leading = False  # the role `_role_changed` last counted
        self._wakeup = asyncio.Event()
        self._live_event = asyncio.Event()
        self._beat_owed = False  # the stream came back while we lead: the heartbeat goes out with the next books
        self._redis: RedisLink | None = None
        self._healing: asyncio.Task[None] | None = None  # Redis Cluster: retrying a lost shard while the others publish
        self._say = Throttled(log, 5.0)  # a cluster's retries, every half second at most

    async def run(self) -> None:
        """Run until cancelled; raises UnknownInstrument when a requested instrument is not listed."""
        s = self.settings
        metrics = MetricsServer(self.stats, self._gauges, s.metrics_host, s.metrics_port) if s.metrics_port else None
        self.metrics_port = metrics.port if metrics is not None else None
        self._redis = RedisLink(s.redis_url, s.redis_cluster, self.source)
        self._down_since = asyncio.get_running_loop().time()
        log.info("ingesting for Redis %s%s as %s (prefix %r, depth %d, coalesce %s, lease %g s); publishing while it holds the lease",
                 "Cluster " if s.redis_cluster else "", redact(s.redis_url), self.source, s.prefix, s.depth, "on" if s.coalesce else "off", s.lease)
        tasks = [
            asyncio.create_task(self._feed_loop(), name="ingest-feed"),
            asyncio.create_task(self._publish_loop(), name="ingest-publish"),
            asyncio.create_task(self._lease_loop(), name="ingest-lease"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a task ends only by an error worth raising
        finally:
            if self._healing is not None:
                tasks.append(self._healing)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await self._release("stopping")  # first: a standby takes over while we close the rest
            finally:
                if metrics is not None:
                    await asyncio.to_thread(metrics.close)
                await self._redis.aclose()

    def _gauges(self) -> Gauges:
        return Gauges(self.lease.leading, self.live, self.redis_up is True)

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
        if self.live and not live:
            self._down_since = asyncio.get_running_loop().time()
        if live and not self.live and self.lease.leading:
            self._beat_owed = True  # our renewals deleted the heartbeat while the stream was down
        self.live = live
        (self._live_event.set if live else self._live_event.clear)()

    # -- Redis side ----------------------------------------------------------

    async def _publish_loop(self) -> None:
        assert self._redis is not None
        stats, history = self.stats, self.settings.trades_history
        instruments_key = self.keys.instruments.encode()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            queue = self.queue
            if queue is None:
                continue
            value = self.lease.value
            if value is None:  # standing by: the books stay warm, nothing is written
                queue.discard()
                continue
            drain = queue.take(now_us())
            if not drain:
                continue
            if self.settings.redis_cluster:
                commands = slot_commands(drain, self.settings.prefix, history, value)
            else:
                commands = drain_commands(drain, instruments_key, history, Fence(self._leader_key, value))
            beat_owed = self._beat_owed
            if beat_owed:  # first in the round trip: no bridge sees these books while the heartbeat is missing
                beat = schema.encode_heartbeat(now_us(), self.source)
                commands = [self.lease.renew(self._lease_keys, beat, self._heartbeat_ms), *commands]
            try:
                async with timeout(REDIS_TIMEOUT):
                    results = await self._redis.pipeline(commands)
            except ERRORS as exc:
                await self._lost(exc)
                continue
            if self._healing is None or self._healing.done():
                self.redis_up = True
            if beat_owed:
                self._beat_owed = False
            errors = tally(commands, results, stats)
            if errors:
                await self._refused(errors, value)

    async def _refused(self, errors: list[Exception], value: bytes) -> None:
        """Scripts of a drain written with lease `value` were refused: fenced (we lost the lease), or worse."""
        holders = [refusal(str(e)) for e in errors]
        fenced = [h for h in holders if h is not False]
        if False in holders:
            await self._lost(errors[holders.index(False)])
            if not self.settings.redis_cluster or not fenced:
                return  # one server: it answers no script when it is away; a cluster's other shards may refuse some
        self.stats.fenced_writes += len(fenced)
        if self.lease.value == value:  # not already replaced by a newer lease of ours
            note = self.lease.held_by(fenced[-1])  # type: ignore[arg-type]
            self._role_changed(f"{note} (a write was fenced)")

    async def _lost(self, exc: BaseException) -> None:
        """One server: publish nothing until it answers. A cluster: retry the lost shard aside, the others publish on."""
        if not self.settings.redis_cluster:
            await self._redis_lost(exc)
        elif self._healing is None or self._healing.done():
            self.redis_up = False
            self._healing = asyncio.create_task(self._redis_lost(exc), name="ingest-heal")

    async def _redis_lost(self, exc: BaseException) -> None:
        """Retry until Redis (every shard of a cluster) answers, then make every book and the instrument list due again."""
        assert self._redis is not None
        self.redis_up = False
        backoff, say = self._redis.backoff(), self._say if self.settings.redis_cluster else log.log
        while True:
            delay = backoff.next()
            say(logging.WARNING, "Redis %s unavailable (%s); retrying in %.2f s", redact(self.settings.redis_url), exc, delay)
            await asyncio.sleep(delay)
            try:
                await self._redis.check()
                break
            except ERRORS as again:
                exc = again
        self.redis_up = True
        self.stats.redis_reconnects += 1
        if self.queue is not None:
            self.queue.republish_all()
        log.info("Redis %s reachable again; republishing every book", redact(self.settings.redis_url))
        self._wakeup.set()

    # -- the lease -----------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Renew the lease every P/3 while leading; bid for it every P/4 while standing by with a live stream."""
        lease, loop = self.lease, asyncio.get_running_loop()
        while True:
            if not lease.leading and not self.live:
                await self._live_event.wait()  # no books to publish: no bid
            started = loop.time()
            await self._lease_step(lease.step(self.live, 0.0 if self.live else started - self._down_since, started), started)
            await asyncio.sleep(max(0.0, started + lease.interval - loop.time()))

    async def _lease_step(self, step: Step, started: float) -> None:
        assert self._redis is not None
        lease, loop = self.lease, asyncio.get_running_loop()
        if step is Step.RELEASE:
            await self._release(f"the simulator stream has been down for {loop.time() - self._down_since:.1f} s")
            return
        if step is Step.WAIT:
            return
        beat = schema.encode_heartbeat(now_us(), self.source) if self.live else b""
        keys = self._lease_keys
        note: str | None = None
        try:
            # Not one lease period: a reply waiting for us after a pause still counts; the next renewal's fence says who leads.
            async with timeout(REDIS_TIMEOUT):
                if step is Step.ACQUIRE:
                    note = lease.acquired(await self._redis.execute_command(*lease.acquire(keys, beat, self._heartbeat_ms)), started)
                else:
                    note = lease.renewed(started, await self._redis.execute_command(*lease.renew(keys, beat, self._heartbeat_ms)))
        except ERRORS as exc:
            holder = refusal(str(exc)) if isinstance(exc, ResponseError) else False
            if holder is False:
                self._redis_unreachable(exc)
                # A cluster's slot fences, not the lease's TTL, keep a stale leader out: lead on while the `{leader}` shard fails over.
                note = lease.unreachable(loop.time(), keep=self.settings.redis_cluster)
            else:
                self.stats.fenced_writes += 1  # the renewal, and the heartbeat it carried
                note = lease.held_by(holder)  # type: ignore[arg-type]
        else:
            if self.redis_up is False:
                log.info("Redis %s answers the lease again", redact(self.settings.redis_url))
            self.redis_up = True
        self._role_changed(note)

    def _redis_unreachable(self, exc: BaseException) -> None:
        if self.redis_up is not False:
            log.warning("Redis %s did not answer the lease (%s); retrying every %.2f s", redact(self.settings.redis_url), str(exc) or type(exc).__name__, self.lease.interval)
        self.redis_up = False

    def _role_changed(self, note: str | None, lost: int = logging.WARNING) -> None:
        """Log `note` (at `lost` if we stopped leading); count a change of role; on taking the lease republish all."""
        leading, was = self.lease.leading, self._was_leading
        if note:
            log.log(lost if was and not leading else logging.INFO, note)
        if leading == was:
            return
        self._was_leading = leading
        self.stats.leader_changes += 1
        if leading and self.queue is not None:
            self.queue.republish_all()
            self._wakeup.set()

    async def _release(self, why: str) -> None:
        """Delete the lease if it is still ours, so that a standby takes over at once."""
        if self._redis is None or not self.lease.leading:
            return
        try:
            async with timeout(min(REDIS_TIMEOUT, self.lease.period)):
                deleted = await self._redis.execute_command(*self.lease.release(self._leader_key))
        except ERRORS as exc:
            log.warning("could not release the lease (%s); a standby takes over when it expires", exc)
            self._role_changed(self.lease.unreachable(asyncio.get_running_loop().time()))
            return
        note = self.lease.released()
        if deleted:
            self._role_changed(f"{note}: {why}", lost=logging.INFO)
        else:
            self._role_changed(f"lost the lease before releasing it ({why})")


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
