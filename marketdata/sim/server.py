"""The simulated exchange's gRPC server (`marketdata sim`): a thin shell around the model.

One generator task steps the pure order-flow model (marketdata.sim.model) at each
instrument's rate (--rate times its activity; marketdata.sim.schedule says which
instruments owe events, without visiting the quiet ones) and turns what is due
into protobuf bytes, once per tick: one chunk per instrument due (at most
max_batch events, checksum on its last event). Each subscriber gets those chunks,
concatenated into EventBatch messages of its own instruments (a repeated field's
encodings concatenate, so joining chunks never re-serialises anything), in a
bounded queue. A subscriber whose queue is full is dropped from it and resynced:
its queued batches are discarded and it gets fresh snapshots of its instruments
when it next reads, so a slow reader costs a bounded amount of memory and sees a
snapshot, never a gap.

A server is one run of the exchange, and its epoch (Event.epoch in the proto) is
the clock's reading, in microseconds since the Unix epoch, when the server is
made: it needs no state kept between runs, differs between any two runs that do
not start in the same microsecond, and usually grows from run to run, so logs
read in order. Nothing relies on it growing: consumers take any other epoch as a
reset, so a clock stepped back costs nothing but the ordering of log lines.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from marketdata.clock import now_us
from marketdata.errors import MarketDataError
from marketdata.instruments import MAX_UNIVERSE, Instrument, select, universe
from marketdata.settings import SimSettings
from marketdata.sim.model import Event, Model
from marketdata.sim.schedule import Schedule
from marketdata.sim.wire import WireEncoder, encode_events, pack, snapshot_event
from marketdata.v1 import market_data_pb2 as pb

__all__ = ["MAX_RATE", "SERVICE", "SimServer", "Subscriber", "WireEncoder", "encode_events", "run", "serve"]

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["MarketData"].full_name
MAX_RATE = 100_000  # events/s per instrument, at most (what one core delivers is far less: see the README)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_MIN_TICK = 0.005  # seconds between generator wake-ups at most: higher rates batch per tick
_MAX_CATCH_UP = 2 * _MIN_TICK  # seconds of events one tick generates at most (or 64), so sends interleave
_SNAPSHOTS_PER_MESSAGE = 100  # a message of 100 full books stays far below gRPC's default 4 MB limit
_RESYNC_LOG_EVERY = 10.0  # seconds between two resync log lines of one subscriber


# -- subscribers ---------------------------------------------------------------------------


class Subscriber:
    """One Subscribe stream: its instruments, its bounded queue of serialised batches."""

    __slots__ = (
        "peer", "instruments", "wanted", "limit", "queue", "wake", "resync", "resyncs", "high_water", "sent", "_logged_at",
        "_logged_resyncs",
    )  # fmt: skip

    def __init__(self, peer: str, instruments: tuple[str, ...], limit: int, wanted: frozenset[str] | None = None) -> None:
        self.peer = peer
        self.instruments = instruments
        self.wanted = wanted  # the instruments as a set; None: every listed one
        self.limit = limit
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.resync = False  # the queue overflowed: send fresh snapshots next
        self.resyncs = 0
        self.high_water = 0  # the longest the queue has been
        self.sent = 0  # batches handed to gRPC
        self._logged_at = -_RESYNC_LOG_EVERY
        self._logged_resyncs = 0

    def push(self, data: bytes) -> None:
        if self.resync:
            return
        queue = self.queue
        if len(queue) >= self.limit:
            queue.clear()
            self.resync = True
            self.resyncs += 1
            now = time.monotonic()
            if now - self._logged_at >= _RESYNC_LOG_EVERY:
                # A reader stuck for good would log at every overflow: one line per period instead.
                log.warning(
                    "subscriber %s fell %d batches behind: queue dropped, resyncing with fresh snapshots"
                    " (%d times since the last such line)",
                    self.peer, self.limit, self.resyncs - self._logged_resyncs,
                )  # fmt: skip
                self._logged_at = now
                self._logged_resyncs = self.resyncs
        else:
            queue.append(data)
            if len(queue) > self.high_water:
                self.high_water = len(queue)
        self.wake.set()


# -- the server ----------------------------------------------------------------------------


class SimServer:
    """The simulated exchange: model, generator task and gRPC server (health, reflection).

    `clock` gives wall time in integer microseconds since the Unix epoch: the epoch
    of this run and the exchange time of every event. Same seed, same events; only
    the epoch (and the times) differ from run to run.
    """

    def __init__(self, settings: SimSettings, clock: Callable[[], int] = now_us) -> None:
        if not 0 < settings.rate <= MAX_RATE:
            raise MarketDataError(f"rate {settings.rate:g} is out of range: 0 < events/s per instrument <= {MAX_RATE}")
        if settings.max_batch < 1 or settings.queue_batches < 1 or settings.burst_factor <= 0:
            raise MarketDataError("max_batch, queue_batches and burst_factor must be positive")
        if not 1 <= settings.universe <= MAX_UNIVERSE:
            raise MarketDataError(f"universe {settings.universe} is out of range: 1 to {MAX_UNIVERSE} instruments")
        self.settings = settings
        self.instruments: tuple[Instrument, ...] = select(settings.instruments, universe(settings.universe, settings.seed))
        self._by_id = {inst.id: inst for inst in self.instruments}
        self._ids = tuple(self._by_id)
        self._clock = clock
        self.epoch: int = clock()
        self.model = Model(self.instruments, random.Random(settings.seed), epoch=self.epoch)
        self._encoder = WireEncoder()
        self.subscribers: set[Subscriber] = set()
        self.generated = 0  # events generated so far
        self._listing = pb.ListInstrumentsResponse(instruments=[_instrument_pb(i) for i in self.instruments])
        self._server: aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.port = 0

    # -- lifecycle --

    async def start(self) -> int:
        """Bind host:port (0: a free port), start serving and generating; return the port."""
        s = self.settings
        server = aio.server(options=[("grpc.so_reuseport", 0)])
        handlers = {
            "ListInstruments": grpc.unary_unary_rpc_method_handler(
                self._list_instruments,
                request_deserializer=pb.ListInstrumentsRequest.FromString,
                response_serializer=pb.ListInstrumentsResponse.SerializeToString,
            ),
            "GetSnapshot": grpc.unary_unary_rpc_method_handler(
                self._get_snapshot,
                request_deserializer=pb.GetSnapshotRequest.FromString,
                response_serializer=pb.Event.SerializeToString,
            ),
            # Batches are serialised once by the generator and shared: bytes go out as they are.
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                self._subscribe,
                request_deserializer=pb.SubscribeRequest.FromString,
                response_serializer=None,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_registered_method_handlers(SERVICE, handlers)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        try:
            port = server.add_insecure_port(f"{s.host}:{s.port}")
        except RuntimeError as exc:
            raise MarketDataError(f"cannot listen on {s.host}:{s.port}: {exc}") from None
        await server.start()
        for name in ("", SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        self.port = port
        self._task = asyncio.create_task(self._generate(), name="sim-generator")
        log.info(
            "listening on %s:%d (%d instruments, %g events/s each on average, seed %d, epoch %d)",
            s.host, port, len(self.instruments), s.rate, s.seed, self.epoch,
        )  # fmt: skip
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Stop generating, end every stream, and stop the gRPC server after `grace` seconds."""
        if self._server is None:
            return
        self._closing = True
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        for sub in self.subscribers:
            sub.wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._server.stop(grace)
        self._server = None
        log.info("stopped")

    # -- generation --

    def _speed_at(self, elapsed: float) -> float:
        """How many times --rate the market runs at, `elapsed` seconds after the start (bursts)."""
        s = self.settings
        if s.burst_factor != 1.0 and elapsed % s.burst_every < s.burst_length:
            return s.burst_factor
        return 1.0

    async def _generate(self) -> None:
        rate = self.settings.rate
        schedule = Schedule([rate * inst.activity for inst in self.instruments])
        start = last = time.monotonic()
        clock = 0.0  # schedule time: wall time, sped up during bursts
        behind_logged = 0.0
        while True:
            now = time.monotonic()
            speed = self._speed_at(now - start)
            clock += speed * (now - last)
            last = now
            skipped = schedule.skipped
            due = schedule.due(clock, _MAX_CATCH_UP * speed)
            if schedule.skipped != skipped and now - behind_logged > 10.0:
                log.warning(
                    "generator cannot keep up with %g events/s per instrument on average; skipping ahead"
                    " (%d events skipped since the start)",
                    rate * speed, schedule.skipped,
                )  # fmt: skip
                behind_logged = now
            if due:
                self._emit(due)
            await asyncio.sleep(max(_MIN_TICK, (schedule.next_due() - clock) / speed))

    def _emit(self, due: list[tuple[int, int]]) -> None:
        """Generate the events due, (instrument index, count) pairs, serialise them once, queue them to subscribers."""
        ts = self._clock()
        generate = self.model.generate
        encode = self._encoder.events
        ids = self._ids
        max_batch = self.settings.max_batch
        chunks: dict[str, list[tuple[bytes, int]]] = {}
        total = 0
        for index, count in due:
            name = ids[index]
            total += count
            if count <= max_batch:
                chunks[name] = [(encode(generate(name, count, ts)), count)]
                continue
            parts = chunks[name] = []
            while count:
                n = min(count, max_batch)
                parts.append((encode(generate(name, n, ts)), n))
                count -= n
        self.generated += total
        if not self.subscribers:
            return
        packed: dict[frozenset[str] | None, list[bytes]] = {}
        for sub in self.subscribers:
            messages = packed.get(sub.wanted)
            if messages is None:
                messages = packed[sub.wanted] = pack(chunks, sub.wanted, max_batch)
            for data in messages:
                sub.push(data)

    # -- RPCs --

    async def _list_instruments(
        self, request: pb.ListInstrumentsRequest, context: aio.ServicerContext
    ) -> pb.ListInstrumentsResponse:
        return self._listing

    async def _get_snapshot(self, request: pb.GetSnapshotRequest, context: aio.ServicerContext) -> pb.Event:
        name = await self._check_ids([request.instrument], context)
        return snapshot_event(self.model.snapshot(name[0], self._clock()))

    async def _check_ids(self, ids: Iterable[str], context: aio.ServicerContext) -> tuple[str, ...]:
        """The known instruments among `ids` (deduplicated, in order) or abort the call."""
        chosen: dict[str, None] = {}
        for name in ids:
            if not _ID.fullmatch(name):
                what = "an empty instrument id" if not name else f"malformed instrument id {name!r}"
                rule = "ids are 1-32 letters, digits, '.', '_' or '-'"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {rule}")
            if name not in self._by_id:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown instrument {name!r}")
            chosen[name] = None
        return tuple(chosen)

    def _snapshots(self, instruments: tuple[str, ...]) -> list[list[Event]]:
        """Fresh snapshots of `instruments`, all taken now, in groups of one message each.

        They are encoded as they are sent: encoding a thousand books at once would hold
        the event loop, and the generator, for a tenth of a second.
        """
        ts = self._clock()
        snapshot = self.model.snapshot
        per = min(self.settings.max_batch, _SNAPSHOTS_PER_MESSAGE)
        return [[snapshot(name, ts) for name in instruments[i : i + per]] for i in range(0, len(instruments), per)]

    async def _subscribe(self, request: pb.SubscribeRequest, context: aio.ServicerContext) -> None:
        # Writes with context.write rather than yielding: a write that finds the stream gone
        # (the client left while it was being sent) then raises here, where it is one log
        # line, instead of inside grpc, which logs it as an ERROR with a traceback.
        ids = await self._check_ids(request.instruments, context) if request.instruments else self._ids
        peer = context.peer()
        wanted = None if len(ids) == len(self._ids) else frozenset(ids)  # ids are known and distinct
        sub = Subscriber(peer, ids, self.settings.queue_batches, wanted)
        # Registered and snapshotted with no await in between: the queue starts right after the snapshot.
        self.subscribers.add(sub)
        snapshots = deque(self._snapshots(ids))
        log.info("subscriber %s connected (%d instruments)", peer, len(ids))
        reason = "closed by the client"
        try:
            queue = sub.queue
            while not self._closing:
                if snapshots:
                    data = self._encoder.snapshots(snapshots.popleft())
                elif sub.resync:
                    # Taken and the queue emptied with no await in between: it restarts after them.
                    snapshots.extend(self._snapshots(ids))
                    queue.clear()
                    sub.resync = False
                    continue
                elif queue:
                    data = queue.popleft()
                else:
                    sub.wake.clear()
                    await sub.wake.wait()
                    continue
                sub.sent += 1
                await context.write(data)
            reason = "server stopping"
        except aio.InternalError:  # grpc's ExecuteBatchError: the stream ended under a write
            reason = "the stream ended during a write"
        finally:
            self.subscribers.discard(sub)
            log.info("subscriber %s disconnected (%s, %d resyncs)", peer, reason, sub.resyncs)


def _instrument_pb(inst: Instrument) -> pb.Instrument:
    return pb.Instrument(
        id=inst.id,
        kind=inst.kind,
        description=inst.description,
        tick_size=inst.tick_size,
        lot_size=inst.lot_size,
        price_decimals=inst.price_decimals,
        size_decimals=inst.size_decimals,
    )


# -- entry point ---------------------------------------------------------------------------


async def serve(settings: SimSettings) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully."""
    server = SimServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop(1.0)


def run(settings: SimSettings) -> int:
    """The `marketdata sim` entry: blocking, uvloop when available."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0
