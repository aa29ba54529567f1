"""The simulator's gRPC server over real loopback gRPC: contract, errors, health, reflection, slow readers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from marketdata.errors import MarketDataError
from marketdata.feed import Books
from marketdata.instruments import DEFAULT_INSTRUMENTS, MAX_UNIVERSE, universe
from marketdata.settings import SimSettings
from marketdata.sim.server import SERVICE, SimServer
from marketdata.v1 import market_data_pb2 as pb
from marketdata.v1 import market_data_pb2_grpc as pb_grpc
from tests.support import async_wait_for

IDS = [inst.id for inst in DEFAULT_INSTRUMENTS]


@asynccontextmanager
async def running(clock: Callable[[], int] | None = None, **overrides: object) -> AsyncIterator[tuple[SimServer, grpc.aio.Channel]]:
    settings = SimSettings(**{"port": 0, "seed": 7, "rate": 500.0, **overrides})  # type: ignore[arg-type]
    server = SimServer(settings) if clock is None else SimServer(settings, clock=clock)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield server, channel
    finally:
        await server.stop(0)


def last_index_per_instrument(batch: pb.EventBatch) -> dict[str, int]:
    return {ev.instrument: i for i, ev in enumerate(batch.events)}


@pytest.mark.asyncio
async def test_list_instruments_and_snapshot() -> None:
    async with running() as (server, channel):
        stub = pb_grpc.MarketDataStub(channel)
        listing = await stub.ListInstruments(pb.ListInstrumentsRequest())
        assert [i.id for i in listing.instruments] == IDS
        for got, inst in zip(listing.instruments, DEFAULT_INSTRUMENTS, strict=True):
            assert (got.tick_size, got.lot_size, got.kind) == (inst.tick_size, inst.lot_size, inst.kind)
            assert (got.price_decimals, got.size_decimals) == (inst.price_decimals, inst.size_decimals)

        snap = await stub.GetSnapshot(pb.GetSnapshotRequest(instrument="ES-DEC26"))
        assert snap.instrument == "ES-DEC26" and snap.WhichOneof("body") == "snapshot"
        assert snap.HasField("checksum") and snap.ts > 1_600_000_000_000_000
        assert len(snap.snapshot.bids) >= 20 and len(snap.snapshot.asks) >= 20
        books = Books(["ES-DEC26"])
        books.apply(snap)  # verifies the checksum
        bids = [lv.price for lv in snap.snapshot.bids]
        assert bids == sorted(bids, reverse=True) and bids[0] < snap.snapshot.asks[0].price


@pytest.mark.asyncio
async def test_subscribe_streams_snapshots_then_verifiable_events() -> None:
    wanted = ["BTC-USD", "AAPL", "EUR-USD", "AAPL"]  # duplicates are ignored
    async with running(rate=3000.0, max_batch=50) as (server, channel):
        stub = pb_grpc.MarketDataStub(channel)
        books = Books(IDS)
        seen: dict[str, int] = {}
        total = 0
        call = stub.Subscribe(pb.SubscribeRequest(instruments=wanted))
        async for batch in call:
            assert 0 < len(batch.events) <= 50
            for i, ev in enumerate(batch.events):
                if ev.instrument not in seen:
                    assert ev.WhichOneof("body") == "snapshot", f"first event of {ev.instrument} must be a snapshot"
                seen[ev.instrument] = seen.get(ev.instrument, 0) + 1
                books.apply(ev)  # raises on a gap or a checksum mismatch
            for i in last_index_per_instrument(batch).values():
                assert batch.events[i].HasField("checksum")
            total += len(batch.events)
            if total >= 6000 and len(seen) == 3:
                break
        call.cancel()
        assert set(seen) == {"BTC-USD", "AAPL", "EUR-USD"}
        assert min(seen.values()) > 1000


@pytest.mark.asyncio
async def test_every_event_carries_the_epoch_read_from_the_clock_at_start() -> None:
    async with running(clock=lambda: 1_764_050_000_123_456, rate=2000.0) as (server, channel):
        assert server.epoch == 1_764_050_000_123_456
        stub = pb_grpc.MarketDataStub(channel)
        assert (await stub.GetSnapshot(pb.GetSnapshotRequest(instrument="AAPL"))).epoch == server.epoch
        call = stub.Subscribe(pb.SubscribeRequest(instruments=["BTC-USD", "AAPL"]))
        epochs: set[int] = set()
        count = 0
        async for batch in call:
            epochs.update(ev.epoch for ev in batch.events)
            count += len(batch.events)
            if count >= 500:
                break
        call.cancel()
        assert epochs == {server.epoch}
    async with running() as (a, _), running() as (b, _):
        assert a.epoch != b.epoch, "every run has an epoch of its own"
        assert a.epoch > 1_600_000_000_000_000  # the wall clock in µs by default


@pytest.mark.asyncio
async def test_the_same_seed_gives_the_same_market_in_another_epoch() -> None:
    """A restart with the same --seed: the same books and seqs again, told apart only by the epoch."""
    firsts = []
    for epoch in (1_000_000, 2_000_000):
        # A rate so low that no event is generated before the snapshots: both start at seq 0.
        async with running(clock=lambda e=epoch: e, seed=11, rate=0.01) as (_server, channel):  # type: ignore[misc]
            call = pb_grpc.MarketDataStub(channel).Subscribe(pb.SubscribeRequest())
            firsts.append(list((await call.read()).events))
            call.cancel()
    (a, b) = firsts
    assert {ev.epoch for ev in a} == {1_000_000} and {ev.epoch for ev in b} == {2_000_000}
    assert {ev.seq for ev in a + b} == {0}
    for x, y in zip(a, b, strict=True):
        y.epoch, y.ts = x.epoch, x.ts
        assert x == y


@pytest.mark.asyncio
async def test_subscribe_to_nothing_means_everything() -> None:
    async with running() as (server, channel):
        call = pb_grpc.MarketDataStub(channel).Subscribe(pb.SubscribeRequest())
        first = await call.read()
        assert [ev.instrument for ev in first.events] == IDS
        assert all(ev.WhichOneof("body") == "snapshot" and ev.HasField("checksum") for ev in first.events)
        call.cancel()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("ids", "code", "named"),
    [
        (["NOPE"], grpc.StatusCode.NOT_FOUND, "'NOPE'"),
        (["BTC-USD", "XYZ-1"], grpc.StatusCode.NOT_FOUND, "'XYZ-1'"),
        ([""], grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (["BTC USD"], grpc.StatusCode.INVALID_ARGUMENT, "'BTC USD'"),
    ],
)
async def test_bad_instruments_are_refused(ids: list[str], code: grpc.StatusCode, named: str) -> None:
    async with running() as (server, channel):
        stub = pb_grpc.MarketDataStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Subscribe(pb.SubscribeRequest(instruments=ids)):
                pass
        assert info.value.code() == code and named in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetSnapshot(pb.GetSnapshotRequest(instrument=ids[-1]))
        assert info.value.code() == code and named in (info.value.details() or "")
        assert not server.subscribers


@pytest.mark.asyncio
async def test_health_and_reflection() -> None:
    async with running() as (server, channel):
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        names = {s.name for s in reply.list_services_response.service}
        assert "marketdata.v1.MarketData" in names and "grpc.health.v1.Health" in names


@pytest.mark.asyncio
async def test_a_reader_that_stalls_is_resynced_not_buffered() -> None:
    ids = ["BTC-USD", "ETH-USD"]
    settings = SimSettings(port=0, seed=3, instruments=tuple(ids), rate=4000.0, max_batch=40, queue_batches=4)
    server = SimServer(settings)
    port = await server.start()
    # No BDP probing: the client's flow-control window stays small, so a stalled read stalls the server soon.
    options = [("grpc.http2.bdp_probe", 0)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            call = pb_grpc.MarketDataStub(channel).Subscribe(pb.SubscribeRequest())
            books = Books(ids)
            for ev in (await call.read()).events:
                books.apply(ev)
            (sub,) = server.subscribers
            # The client reads nothing: gRPC's windows fill, then the server's queue overflows.
            await async_wait_for(lambda: sub.resyncs >= 1, timeout=30, what="the stalled subscriber to be resynced")
            assert sub.high_water <= 4 and len(sub.queue) <= 4

            # Reading again: what gRPC had buffered is still contiguous, then fresh snapshots, then live events.
            resynced: set[str] = set()
            after = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while len(resynced) < 2 or after < 2000:
                assert loop.time() < deadline, f"no fresh snapshots after resuming (resynced: {resynced})"
                batch = await call.read()
                for ev in batch.events:
                    if books.apply(ev) == "snapshot":  # raises on any gap or checksum mismatch
                        resynced.add(ev.instrument)
                    elif resynced:
                        after += 1
            assert books.is_ready("BTC-USD") and books.is_ready("ETH-USD")
            assert sub.high_water <= 4
            call.cancel()
    finally:
        await server.stop(0)


@pytest.mark.asyncio
async def test_stop_ends_streams() -> None:
    server = SimServer(SimSettings(port=0, rate=100.0))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.MarketDataStub(channel).Subscribe(pb.SubscribeRequest(instruments=["MSFT"]))
        await call.read()
        await server.stop(2.0)

        async def drain() -> None:
            while await call.read() is not grpc.aio.EOF:
                pass

        await asyncio.wait_for(drain(), timeout=5)  # the stream ends cleanly instead of hanging
        assert await call.code() == grpc.StatusCode.OK
        assert not server.subscribers


def test_bursts_multiply_the_rate_and_bad_settings_are_refused() -> None:
    server = SimServer(SimSettings(rate=100.0, burst_factor=5.0, burst_every=10.0, burst_length=2.0))
    assert [server._speed_at(t) for t in (0.0, 1.9, 2.0, 9.9, 10.5, 12.5)] == [5, 5, 1, 1, 5, 1]
    assert SimServer(SimSettings(rate=100.0))._speed_at(0.5) == 1
    bad_settings = (
        SimSettings(rate=0.0), SimSettings(rate=1e6), SimSettings(max_batch=0), SimSettings(queue_batches=0),
        SimSettings(universe=0), SimSettings(universe=-5), SimSettings(universe=MAX_UNIVERSE + 1),
    )  # fmt: skip
    for bad in bad_settings:
        with pytest.raises(MarketDataError):
            SimServer(bad)


@pytest.mark.asyncio
async def test_a_universe_of_200_lists_200_and_streams_verified_books_at_each_ones_rate() -> None:
    expected = universe(200, 7)
    async with running(universe=200, rate=20.0) as (server, channel):
        stub = pb_grpc.MarketDataStub(channel)
        listing = await stub.ListInstruments(pb.ListInstrumentsRequest())
        assert [i.id for i in listing.instruments] == [i.id for i in expected]
        assert len({i.id for i in listing.instruments}) == 200
        assert {i.kind for i in listing.instruments} == {"crypto", "equity", "fx", "future"}

        ids = [i.id for i in expected]
        books = Books(ids)
        snapshots: dict[str, int] = {}
        counts: dict[str, int] = dict.fromkeys(ids, 0)
        call = stub.Subscribe(pb.SubscribeRequest())
        loop = asyncio.get_running_loop()
        started = deadline = 0.0
        async for batch in call:
            in_batch = sum(ev.WhichOneof("body") == "snapshot" for ev in batch.events)
            assert in_batch <= 100, "the snapshots of a large universe come in several messages"
            for ev in batch.events:
                if books.apply(ev) == "snapshot":  # raises on a gap or a checksum mismatch
                    snapshots[ev.instrument] = ev.seq
                else:
                    assert ev.instrument in snapshots, f"{ev.instrument}: an event before its snapshot"
                    counts[ev.instrument] += 1
            if not started and len(snapshots) == 200:
                started, deadline = loop.time(), loop.time() + 4.0
            if started and loop.time() >= deadline:
                break
        call.cancel()
        elapsed = loop.time() - started

    assert set(snapshots) == set(ids), "every instrument starts with a snapshot"
    ranked = sorted(expected[8:], key=lambda i: i.activity)
    quiet, busy = ranked[:20], ranked[-5:]
    assert all(counts[i.id] > 0 for i in busy), "the busiest instruments stream"
    per_quiet = sum(counts[i.id] for i in quiet) / len(quiet)
    per_busy = sum(counts[i.id] for i in busy) / len(busy)
    assert per_busy > 10 * max(per_quiet, 1.0), f"busy {per_busy:.0f} vs quiet {per_quiet:.0f} events each"
    for inst in DEFAULT_INSTRUMENTS:  # the named eight keep --rate
        assert counts[inst.id] <= 20.0 * elapsed + 25, f"{inst.id}: {counts[inst.id]} events in {elapsed:.1f} s"
    total = sum(counts.values())
    assert total <= 20.0 * 200 * elapsed * 1.2, f"{total} events in {elapsed:.1f} s: more than --rate x 200"
