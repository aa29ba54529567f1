"""The ingestor against a real simulator (gRPC on loopback) and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable

import grpc
import orjson
import pytest
import redis.asyncio as aredis

from marketdata import cli, schema
from marketdata.book import OrderBook
from marketdata.errors import UnknownInstrument
from marketdata.ingest.ingestor import Ingestor, run
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument
from marketdata.settings import IngestSettings, SimSettings
from marketdata.sim.server import SimServer
from marketdata.supervisor.redis_server import RedisServer
from marketdata.v1 import market_data_pb2 as pb
from marketdata.v1 import market_data_pb2_grpc as pb_grpc
from tests.conftest import RunningSim
from tests.support import async_wait_for

INSTRUMENTS = {i.id: i for i in DEFAULT_INSTRUMENTS}


# -- helpers ------------------------------------------------------------------------------


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for it; its own error (not the cancellation) is raised."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise  # we are being cancelled ourselves


@contextlib.asynccontextmanager
async def running(settings: IngestSettings) -> AsyncIterator[Ingestor]:
    """An Ingestor running on this loop; an error that ended it fails the test on exit."""
    ingestor = Ingestor(settings)
    task = asyncio.create_task(ingestor.run())
    try:
        yield ingestor
    finally:
        await stop(task)


class Listener:
    """A Redis subscriber that keeps (channel, payload) of every message on a pattern, and when each arrived."""

    def __init__(self, url: str, pattern: str) -> None:
        # socket_timeout=None: with one, redis-py 8 on Python 3.11 can swallow the cancellation that stops us.
        self.client = aredis.Redis.from_url(url, socket_timeout=None)
        self.pattern = pattern
        self.messages: list[tuple[str, bytes]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each message, in the same order
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Listener:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(self.pattern)
        self._task = asyncio.create_task(self._read(pubsub))
        return self

    async def _read(self, pubsub: aredis.client.PubSub) -> None:
        # Blocking reads: get_message(timeout=...) can leak a spurious cancellation on Python 3.11
        # when its timeout expires just as a message arrives.
        try:
            async for msg in pubsub.listen():
                if msg["type"] == "pmessage":
                    self.arrivals.append(time.monotonic())
                    self.messages.append((msg["channel"].decode(), msg["data"]))
        finally:
            await pubsub.aclose()

    def on(self, channel: str) -> list[bytes]:
        return [p for c, p in self.messages if c == channel]

    async def settle(self) -> None:
        """Wait until a PING sent now has come back, so every earlier message has arrived."""
        await self.client.publish(f"{self.pattern[:-1]}zz-settle", b"end")
        await async_wait_for(lambda: self.on(f"{self.pattern[:-1]}zz-settle"), 5, what="the settle marker")

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        await stop(self._task)
        await self.client.aclose()


def crc_of_message(msg: dict, inst: Instrument) -> int:
    """The docs/architecture.md checksum recomputed from a decoded message's decimal levels."""

    def ticks(price: float) -> int:
        return round(round(price * inst.price_scale) / inst.tick_units)

    def lots(size: float) -> int:
        return round(round(size * inst.size_scale) / inst.lot_units)

    side = lambda levels: ",".join(f"{ticks(p)}:{lots(s)}" for p, s in levels[:10])  # noqa: E731
    return zlib.crc32(f"{side(msg['asks'])}|{side(msg['bids'])}".encode())


async def record_truth(address: str, truth: dict[tuple[str, int], int], first: dict[str, int]) -> None:
    """A second subscription: the simulator's own checksum at every seq where it sends one."""
    async with grpc.aio.insecure_channel(address) as channel:
        async for batch in pb_grpc.MarketDataStub(channel).Subscribe(pb.SubscribeRequest()):
            for ev in batch.events:
                first.setdefault(ev.instrument, ev.seq)
                if ev.HasField("checksum"):
                    truth[(ev.instrument, ev.seq)] = ev.checksum


async def equals(awaitable: Awaitable[object], value: object) -> bool:
    return await awaitable == value


def settings_for(sim: str, redis_url: str, **kw: object) -> IngestSettings:
    return IngestSettings(sim=sim, redis_url=redis_url, **kw)  # type: ignore[arg-type]


# -- against the shared simulator ------------------------------------------------------------


@pytest.mark.asyncio
async def test_published_books_are_the_simulators_books(sim: RunningSim, redis_url: str) -> None:
    truth: dict[tuple[str, int], int] = {}
    first: dict[str, int] = {}
    recorder = asyncio.create_task(record_truth(sim.address, truth, first))
    await async_wait_for(lambda: len(first) == len(INSTRUMENTS), 5, what="the reference subscription's snapshots")
    try:
        async with Listener(redis_url, "md:book:*") as books:
            async with running(settings_for(sim.address, redis_url, depth=12)) as ing:
                await async_wait_for(lambda: len(books.messages) >= 120 and ing.stats.drains >= 20, 10, what="120 published books")
            await books.settle()
    finally:
        await stop(recorder)
    checked = 0
    for channel, payload in books.messages:
        if channel.endswith("zz-settle"):
            continue
        msg = schema.decode(payload)
        inst = INSTRUMENTS[msg["instrument"]]
        assert channel == f"md:book:{inst.id}"
        assert len(msg["bids"]) == len(msg["asks"]) == 12
        assert msg["ts"] <= msg["pts"]
        assert crc_of_message(msg, inst) == msg["checksum"], f"{inst.id} seq {msg['seq']}: levels disagree with checksum"
        if msg["seq"] >= first[inst.id]:
            assert truth.get((inst.id, msg["seq"])) == msg["checksum"], f"{inst.id} seq {msg['seq']} differs from the simulator"
            checked += 1
    assert checked >= 100, f"only {checked} snapshots could be compared with the simulator's"
    assert ing.stats.gaps == ing.stats.checksum_mismatches == 0
    # The last-value key holds exactly the last payload published on each channel.
    client = aredis.Redis.from_url(redis_url)
    try:
        for inst in INSTRUMENTS:
            published = books.on(f"md:book:{inst}")
            assert published and await client.get(f"md:book:{inst}") == published[-1]
        listed = orjson.loads(await client.get("md:instruments"))
        assert [i["id"] for i in listed] == list(INSTRUMENTS)
        assert listed[0] == schema.instrument_json(DEFAULT_INSTRUMENTS[0])
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_heartbeat_trades_and_the_instrument_subset(sim: RunningSim, redis_url: str) -> None:
    settings = settings_for(sim.address, redis_url, instruments=("ETH-USD", "BTC-USD"), trades_history=3, heartbeat_ttl=1.5)
    client = aredis.Redis.from_url(redis_url)
    try:
        async with Listener(redis_url, "md:trades:*") as trades, running(settings) as ing:
            await async_wait_for(lambda: len(trades.on("md:trades:BTC-USD")) >= 4, 15, what="4 BTC-USD trades")
            ttl = await client.pttl("md:heartbeat")
            assert 0 < ttl <= 1500
            beat = orjson.loads(await client.get("md:heartbeat"))
            assert beat["v"] == 1 and beat["source"] == ing.source and beat["ts"] > 0
            stored = await client.lrange("md:trades:BTC-USD", 0, -1)
            await trades.settle()  # every trade published before that LRANGE has now arrived here
            received = trades.on("md:trades:BTC-USD")
            newest = received.index(stored[0])
            assert stored == received[newest - 2 : newest + 1][::-1], "the list keeps the newest 3, newest first"
            msg = schema.decode(stored[0])
            assert msg["type"] == "trade" and msg["side"] in ("buy", "sell") and msg["instrument"] == "BTC-USD"
            assert ing.stats.trade_publishes >= 4
            listed = orjson.loads(await client.get("md:instruments"))
            assert [i["id"] for i in listed] == ["ETH-USD", "BTC-USD"]
            assert await client.exists("md:book:SOL-USD") == 0
            # The heartbeat is refreshed every ttl/3: a later one replaces the first before it expires.
            first_ts = beat["ts"]

            async def refreshed() -> bool:
                raw = await client.get("md:heartbeat")
                return raw is not None and orjson.loads(raw)["ts"] >= first_ts + 1_400_000

            await async_wait_for(refreshed, 5, what="a heartbeat written 1.4 s after the first")
    finally:
        await client.aclose()


def test_an_unknown_instrument_is_a_one_line_error(sim: RunningSim, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnknownInstrument, match="'NOPE'"):
        run(IngestSettings(sim=sim.address, redis_url=redis_server.url, instruments=("BTC-USD", "NOPE")))
    code = cli.main(["ingest", "--sim", sim.address, "--redis-url", redis_server.url, "--instruments", "NOPE"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == "marketdata ingest: unknown instrument 'NOPE'"


# -- simulators of the test's own ------------------------------------------------------------


@contextlib.asynccontextmanager
async def own_sim(**kw: object) -> AsyncIterator[SimServer]:
    server = SimServer(SimSettings(**{"port": 0, "seed": 3, "rate": 200.0, **kw}))  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.mark.asyncio
async def test_the_leader_deletes_the_heartbeat_when_its_stream_drops_and_writes_it_again_with_its_first_books(redis_url: str) -> None:
    client = aredis.Redis.from_url(redis_url)
    ids = ("BTC-USD",)
    try:
        async with own_sim(instruments=ids, rate=50.0) as first:
            port = first.port
            settings = settings_for(f"127.0.0.1:{port}", redis_url, instruments=ids, lease=2.0, heartbeat_ttl=6.0)
            async with running(settings) as ing, Listener(redis_url, "md:book:*") as books:
                await async_wait_for(lambda: ing.lease.leading and client.exists("md:heartbeat"), 10, what="a leader and its heartbeat")
                await first.stop(0)
                down = time.monotonic()
                await async_wait_for(lambda: equals(client.exists("md:heartbeat"), 0), 3, what="the heartbeat deleted")
                assert time.monotonic() - down < 1.5, "deleted at the next renewal (every 0.67 s), not left to expire (6 s)"
                assert ing.lease.leading, "down for less than the lease: it still leads"
                n = len(books.messages)
                async with own_sim(port=port, instruments=ids, rate=50.0):  # back within the lease
                    await async_wait_for(lambda: len(books.messages) > n, 5, what="books of the new run")
                    assert await client.exists("md:heartbeat"), "the books came back before the heartbeat (a bridge would flap)"
                assert ing.lease.leading
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_coalescing_publishes_fewer_snapshots_than_events(redis_url: str) -> None:
    async with own_sim(rate=8000.0, instruments=("BTC-USD", "ETH-USD")) as server:
        address = f"127.0.0.1:{server.port}"
        async with running(settings_for(address, redis_url)) as ing:
            await async_wait_for(lambda: ing.stats.events >= 4000, 10, what="4000 events")
        coalesced = ing.stats
        assert coalesced.publishes < coalesced.events / 3, coalesced
        async with running(settings_for(address, redis_url, coalesce=False)) as ing:
            await async_wait_for(lambda: ing.stats.publishes >= 2000, 10, what="2000 snapshots")
        # Without coalescing every applied event is one snapshot (those not yet written excepted).
        assert ing.stats.publishes > ing.stats.events / 2, ing.stats


@pytest.mark.asyncio
async def test_simulator_restart_is_a_new_epoch_that_replaces_the_books(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="marketdata.ingest.ingestor")
    client = aredis.Redis.from_url(redis_url)
    truth: dict[tuple[str, int], int] = {}
    first_seq: dict[str, int] = {}
    try:
        # The first market runs fast, so its seqs are far ahead of where the second one's start.
        async with own_sim(seed=1, rate=4000.0) as first:
            port = first.port
            settings = settings_for(f"127.0.0.1:{port}", redis_url, instruments=("BTC-USD",), heartbeat_ttl=0.6)
            async with Listener(redis_url, "md:book:*") as books:
                async with running(settings) as ing:
                    await async_wait_for(lambda: len(books.messages) >= 20 and ing.stats.events >= 2000, 10, what="books from the first simulator")
                    await first.stop(0)
                    await async_wait_for(lambda: not ing.live, 5, what="the ingestor to notice")
                    await async_wait_for(lambda: equals(client.exists("md:heartbeat"), 0), 5, what="the heartbeat to expire")
                    n = len(books.messages)
                    async with own_sim(seed=2, port=port, rate=50.0) as second:  # another market on the same address
                        recorder = asyncio.create_task(record_truth(f"127.0.0.1:{port}", truth, first_seq))
                        try:
                            await async_wait_for(lambda: len(books.messages) > n + 10, 10, what="books from the second simulator")
                            await async_wait_for(lambda: client.exists("md:heartbeat"), 5, what="the heartbeat back")
                        finally:
                            await stop(recorder)
                    assert ing.stats.reconnects >= 1 and ing.stats.gaps == ing.stats.checksum_mismatches == 0
                    assert (ing.epoch, ing.stats.epoch_changes) == (second.epoch, 1)
            stored = schema.decode(await client.get("md:book:BTC-USD"))
        assert first.epoch != second.epoch
        before = [schema.decode(p) for _channel, p in books.messages[:n]]
        after = [schema.decode(p) for _channel, p in books.messages[n:]]
        assert {m["epoch"] for m in before} == {first.epoch}
        assert {m["epoch"] for m in after} == {second.epoch} and stored["epoch"] == second.epoch
        # The seqs started again: in (epoch, seq) order the second run follows, although its seqs are lower.
        assert after[0]["seq"] < before[-1]["seq"], (before[-1]["seq"], after[0]["seq"])
        assert all(crc_of_message(m, INSTRUMENTS["BTC-USD"]) == m["checksum"] for m in after)
        # Every book published since is the second market's at that seq: replaced, not merged.
        last_seen = max(seq for _, seq in truth)
        comparable = [m for m in after if first_seq["BTC-USD"] <= m["seq"] <= last_seen]
        assert len(comparable) >= 5
        wrong = [(m["seq"], m["checksum"], truth.get(("BTC-USD", m["seq"]))) for m in comparable if truth.get(("BTC-USD", m["seq"])) != m["checksum"]]
        assert not wrong, f"(seq, published, simulator's) that differ: {wrong}"
        changed = [r.getMessage() for r in caplog.records if "epoch changed" in r.getMessage()]
        assert changed == [f"simulator epoch changed: {first.epoch} -> {second.epoch}"]
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_redis_restart_resumes_publishing(private_redis: RedisServer) -> None:
    async with own_sim(instruments=("BTC-USD", "ETH-USD")) as server:
        settings = settings_for(f"127.0.0.1:{server.port}", private_redis.url)
        async with running(settings) as ing:
            await async_wait_for(lambda: ing.stats.drains >= 5, 10, what="publishing")
            await asyncio.to_thread(private_redis.restart)
            client = aredis.Redis.from_url(private_redis.url)
            try:
                # The new server starts empty: the keys come back only if the ingestor republished.
                await async_wait_for(lambda: equals(client.exists("md:book:BTC-USD", "md:book:ETH-USD", "md:instruments"), 3), 10, what="books republished")
                async with Listener(private_redis.url, "md:book:*") as books:
                    await async_wait_for(lambda: len(books.messages) >= 5, 10, what="live books after the restart")
                await async_wait_for(lambda: client.exists("md:heartbeat"), 5, what="the heartbeat")
            finally:
                await client.aclose()
            assert ing.stats.redis_reconnects >= 1


# -- a scripted simulator, for the faults the real one never makes ------------------------------


class ScriptedSim(pb_grpc.MarketDataServicer):
    """Serves BTC-USD; the n-th Subscribe plays scripts[n] (the last one again after that), then idles."""

    def __init__(self, scripts: list[list[pb.Event]]) -> None:
        self.scripts = scripts
        self.subscriptions = 0

    async def ListInstruments(self, request: pb.ListInstrumentsRequest, context: grpc.aio.ServicerContext) -> pb.ListInstrumentsResponse:
        i = INSTRUMENTS["BTC-USD"]
        return pb.ListInstrumentsResponse(instruments=[pb.Instrument(
            id=i.id, kind=i.kind, description=i.description, tick_size=i.tick_size, lot_size=i.lot_size,
            price_decimals=i.price_decimals, size_decimals=i.size_decimals)])

    async def Subscribe(self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.EventBatch]:
        script = self.scripts[min(self.subscriptions, len(self.scripts) - 1)]
        self.subscriptions += 1
        for ev in script:
            yield pb.EventBatch(events=[ev])
        await asyncio.Event().wait()


def snapshot(seq: int, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> tuple[pb.Event, OrderBook]:
    book = OrderBook("BTC-USD")
    book.reset(seq, bids, asks)
    ev = pb.Event(instrument="BTC-USD", seq=seq, ts=seq, checksum=book.checksum())
    ev.snapshot.bids.extend(pb.Level(side=1, price=p, size=s) for p, s in bids)
    ev.snapshot.asks.extend(pb.Level(side=2, price=p, size=s) for p, s in asks)
    return ev, book


def update(book: OrderBook, seq: int, side: int, price: int, size: int) -> pb.Event:
    book.seq = seq
    book.set(side, price, size)
    return pb.Event(instrument="BTC-USD", seq=seq, ts=seq, update=pb.Update(changes=[pb.Level(side=side, price=price, size=size)]), checksum=book.checksum())


@contextlib.asynccontextmanager
async def scripted(scripts: list[list[pb.Event]]) -> AsyncIterator[tuple[str, ScriptedSim]]:
    server = grpc.aio.server()
    servicer = ScriptedSim(scripts)
    pb_grpc.add_MarketDataServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(0)


def faulty_then_fresh(fault: str) -> list[list[pb.Event]]:
    snap, book = snapshot(1, [(100, 5)], [(101, 5)])
    good = update(book, 2, 1, 99, 7)
    if fault == "gap":
        bad = update(book, 4, 1, 98, 1)  # seq 3 never came
    else:
        bad = update(book, 3, 1, 98, 1)
        bad.checksum ^= 0xFFFF
    fresh, _ = snapshot(50, [(200, 1)], [(201, 1)])
    return [[snap, good, bad], [fresh]]


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", ["gap", "checksum"])
async def test_a_broken_book_is_not_published_and_is_repaired_by_resubscribing(fault: str, redis_url: str) -> None:
    async with scripted(faulty_then_fresh(fault)) as (address, servicer), Listener(redis_url, "md:book:*") as books:
        async with running(settings_for(address, redis_url)) as ing:
            await async_wait_for(lambda: any(schema.decode(p)["seq"] == 50 for p in books.on("md:book:BTC-USD")), 10, what="the fresh snapshot published")
        seqs = [schema.decode(p)["seq"] for p in books.on("md:book:BTC-USD")]
        assert 3 not in seqs and 4 not in seqs, f"a broken book was published: {seqs}"
        assert seqs[-1] == 50 and servicer.subscriptions == 2
        assert (ing.stats.gaps, ing.stats.checksum_mismatches) == ((1, 0) if fault == "gap" else (0, 1))
        assert ing.stats.resubscribes == 1 and ing.stats.reconnects == 0
