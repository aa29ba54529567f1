"""The ingestor on a real Redis Cluster (3 primaries, a replica each): sharded books, the per-slot fence, a failover.

The simulator lists 200 instruments, so every shard owns some of them. Test clients log
in as the admin; the ingestors as the `ingest` user, as `marketdata up` runs them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Self
from urllib.parse import urlsplit

import orjson
import pytest
import pytest_asyncio
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError, RedisError, ResponseError

from marketdata import schema
from marketdata.book import OrderBook
from marketdata.clock import now_us
from marketdata.ingest.ingestor import Ingestor
from marketdata.ingest.lease import Holder, refusal
from marketdata.ingest.publish_queue import Drain
from marketdata.ingest.slot_writes import (
    INSTRUMENTS_LUA,
    SLOT_LUA,
    fence_key,
    slot_commands,
    slot_of,
)
from marketdata.instruments import Instrument, universe
from marketdata.settings import IngestSettings, SimSettings
from marketdata.supervisor.redis_cluster import RedisClusterServer
from marketdata.supervisor.redis_server import RedisServerError
from tests.conftest import start_sim
from tests.integration.test_ingest import running, stop
from tests.support import BackgroundLoop, async_wait_for

KEYS = schema.Keys("md", cluster=True)
UNIVERSE = 200


@pytest.fixture
def sim200(background_loop: BackgroundLoop) -> Iterator[str]:
    """The real simulator listing 200 instruments, 5 events/s each on average."""
    sim = start_sim(background_loop, SimSettings(port=0, seed=7, rate=5.0, universe=UNIVERSE))
    yield sim.address
    background_loop.call(lambda: sim.server.stop(0))  # type: ignore[attr-defined]


@pytest.fixture
def cluster(redis_cluster: RedisClusterServer) -> RedisClusterServer:
    redis_cluster.wait_healthy()
    redis_cluster.flush()
    return redis_cluster


def settings(sim: str, cluster: RedisClusterServer) -> IngestSettings:
    return IngestSettings(sim=sim, redis_url=cluster.url_for("ingest"), redis_cluster=True)


def node_url(cluster: RedisClusterServer, port: int) -> str:
    """The admin's URL of one node (every node has the same users)."""
    parts = urlsplit(cluster.url)
    return parts._replace(netloc=f"{parts.netloc.rsplit(':', 1)[0]}:{port}").geturl()


@pytest_asyncio.fixture
async def admin(redis_cluster: RedisClusterServer) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster.url, socket_timeout=None)
    yield client
    await client.aclose()


async def listed(admin: RedisCluster) -> list[Instrument]:
    """The instrument list the ingestor wrote, once it is there."""
    raw = await async_wait_for(lambda: admin.get(KEYS.instruments), 15, what="the instrument list")
    return list(schema.decode_instruments(raw))


def verified(payload: bytes, instruments: dict[str, Instrument], instrument: str | None = None) -> dict:
    """The decoded book, after checking that its levels match its checksum (and its instrument, if given)."""
    msg = schema.decode(payload)
    assert msg["type"] == "book" and (instrument is None or msg["instrument"] == instrument)
    assert schema.book_checksum(msg, instruments[msg["instrument"]]) == msg["checksum"], f"{msg['instrument']}: bad checksum"
    return msg


class ShardListener:
    """SSUBSCRIBEs to the book channels of the instruments one primary serves; keeps (channel, payload, arrival)."""

    def __init__(self, url: str, channels: list[str]) -> None:
        self.client = aredis.Redis.from_url(url, socket_timeout=None)
        self.channels = channels
        self.messages: list[tuple[str, bytes, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        for channel in self.channels:  # one SSUBSCRIBE per channel: each may name channels of one slot only
            await pubsub.ssubscribe(channel)
        self._task = asyncio.create_task(self._read(pubsub))
        return self

    async def _read(self, pubsub: aredis.client.PubSub) -> None:
        try:
            async for msg in pubsub.listen():
                if msg["type"] == "smessage":
                    self.messages.append((msg["channel"].decode(), msg["data"], time.monotonic()))
        except (ConnectionError, OSError):
            pass  # the node died: the test killed it
        finally:
            await pubsub.aclose()

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        await stop(self._task)
        await self.client.aclose()


def by_shard(cluster: RedisClusterServer, instruments: list[Instrument]) -> dict[int, list[Instrument]]:
    shards: dict[int, list[Instrument]] = {}
    for inst in instruments:
        shards.setdefault(cluster.primary_for(KEYS.book(inst.id)), []).append(inst)
    return shards


# -- the fence ------------------------------------------------------------------------------


async def run_script(admin: RedisCluster, command: tuple[bytes, ...]) -> object:
    return await admin.execute_command(command[0].decode(), *command[1:])


@pytest.mark.asyncio
async def test_the_slot_fence_lets_newer_tokens_write_and_refuses_older_ones(cluster: RedisClusterServer, admin: RedisCluster) -> None:
    key, trades = KEYS.book("FENCE-T").encode(), KEYS.trades("FENCE-T").encode()
    fence = fence_key("md", slot_of(key))
    drain = Drain(books=[(key, b"book-5")], trades={trades: [b"t1", b"t2"]})
    assert await run_script(admin, slot_commands(drain, "md", 10, b"5 a")[0]) == [1, 0, 2]
    assert await admin.get(fence) == b"5 a", "the first writer raises the empty fence"
    drain = Drain(instruments=b"[7]", books=[(key, b"book-7")], deltas=[(KEYS.deltas("FENCE-T").encode(), b"delta-7")],
                  trades={trades: [b"t3"]})
    listing, books = slot_commands(drain, "md", 10, b"7 b")
    assert await run_script(admin, listing) == 0 and await run_script(admin, books) == [1, 1, 1]
    assert await admin.get(fence) == b"7 b" and await admin.get(key) == b"book-7"
    stale = Drain(instruments=b"[]", books=[(key, b"book-6")], trades={trades: [b"t-stale"]})
    listing, books = slot_commands(stale, "md", 10, b"6 c")
    assert listing[1] is INSTRUMENTS_LUA and books[1] is SLOT_LUA
    for command in (listing, books):
        with pytest.raises(ResponseError) as refused:
            await run_script(admin, command)
        assert refusal(str(refused.value)) == Holder(7, "b")
    assert await admin.get(key) == b"book-7" and await admin.lrange(trades, 0, -1) == [b"t3", b"t2", b"t1"], "a refused script writes nothing"
    assert await admin.get(KEYS.instruments) == b"[7]"
    assert await admin.get(fence) == b"7 b"
    assert await run_script(admin, slot_commands(Drain(books=[(key, b"book-7b")]), "md", 10, b"7 b")[0]) == [1, 0, 0]
    assert await run_script(admin, slot_commands(Drain(books=[(key, b"book-12")]), "md", 10, b"12 d")[0]) == [1, 0, 0]
    assert await admin.get(fence) == b"12 d", "tokens compare as numbers: 12 > 7"


@pytest.mark.asyncio
async def test_after_a_takeover_a_lagging_leader_never_sets_the_bus_back(cluster: RedisClusterServer, admin: RedisCluster) -> None:
    # The old leader published seq 9 just before the new one (one event behind) took over: the new
    # one's books up to 9 are not written for a while after the takeover; from 10 on they are.
    inst = next(i for i in universe(8) if i.id == "BTC-USD")
    key = KEYS.book("TAKE-T").encode()

    def book(seq: int, epoch: int = 1) -> bytes:
        b = OrderBook("TAKE-T")
        b.reset(seq, [(inst.reference_ticks - 1, 1)], [(inst.reference_ticks + 1, 1)], epoch)
        return schema.encode_book(inst, b, 5, ts=seq, pts=seq, checksum=b.checksum()).replace(b'"BTC-USD"', b'"TAKE-T"')

    assert await run_script(admin, slot_commands(Drain(books=[(key, book(9))]), "md", 10, b"3 old")[0]) == [1, 0, 0]
    assert await run_script(admin, slot_commands(Drain(books=[(key, book(8))]), "md", 10, b"4 new")[0]) == [0, 0, 0]
    assert await admin.get(key) == book(9), "the takeover's republish of an older book is not written"
    assert await run_script(admin, slot_commands(Drain(books=[(key, book(9))]), "md", 10, b"4 new")[0]) == [1, 0, 0]
    assert await run_script(admin, slot_commands(Drain(books=[(key, book(10))]), "md", 10, b"4 new")[0]) == [1, 0, 0]
    assert await admin.get(key) == book(10)
    assert await run_script(admin, slot_commands(Drain(books=[(key, book(2, epoch=2))]), "md", 10, b"4 new")[0]) == [1, 0, 0], \
        "a new epoch (a simulator restart) is always written"
    assert await admin.pttl(fence_key("md", slot_of(key)) + b":takeover") > 0


# -- publishing ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_books_go_to_every_shard_verified(sim200: str, cluster: RedisClusterServer, admin: RedisCluster) -> None:
    async with running(settings(sim200, cluster)) as ing:
        instruments = await listed(admin)
        assert len(instruments) == UNIVERSE
        insts = {i.id: i for i in instruments}
        shards = by_shard(cluster, instruments)
        assert len(shards) == 3 and all(len(v) > 20 for v in shards.values()), "200 instruments spread over 3 primaries"
        listeners = [ShardListener(node_url(cluster, port), [KEYS.book(i.id) for i in insts_]) for port, insts_ in shards.items()]
        for listener in listeners:
            await listener.__aenter__()
        try:
            await async_wait_for(lambda: all(len(x.messages) >= 20 for x in listeners), 15, what="20 books on every shard")
        finally:
            for listener in listeners:
                await listener.__aexit__()
        for listener in listeners:
            for channel, payload, _ in listener.messages:
                assert channel == KEYS.book(verified(payload, insts)["instrument"])
        for inst in instruments:  # every book's last value, on its own shard
            verified(await async_wait_for(lambda i=inst: admin.get(KEYS.book(i.id)), 10, what=f"{inst.id}'s book"), insts, inst.id)
        beat = orjson.loads(await admin.get(KEYS.heartbeat))
        assert beat["source"] == ing.source and 0 < await admin.pttl(KEYS.heartbeat) <= 3000
        assert ing.stats.gaps == ing.stats.checksum_mismatches == 0
        assert ing.stats.delta_publishes > 0 and ing.stats.trade_publishes > 0
        lengths = [await admin.llen(KEYS.trades(i.id)) for i in instruments]
        assert any(lengths) and max(lengths) <= ing.settings.trades_history, "trades lists on their shards, trimmed"


@pytest.mark.asyncio
async def test_a_standby_takes_over_and_the_old_lease_is_fenced_on_every_slot(
    sim200: str, cluster: RedisClusterServer, admin: RedisCluster
) -> None:
    ingestors = [Ingestor(settings(sim200, cluster)) for _ in range(2)]
    tasks = [asyncio.create_task(i.run()) for i in ingestors]
    try:
        leader = await async_wait_for(lambda: next((i for i in ingestors if i.lease.leading), None), 15, what="a leader")
        standby = ingestors[1 - ingestors.index(leader)]
        instruments = await listed(admin)
        await async_wait_for(lambda: standby.live, 10, what="the standby's stream")
        old = leader.lease.value
        assert old is not None and not standby.lease.leading
        await stop(tasks[ingestors.index(leader)])  # the leader goes away (SIGTERM's path: it releases the lease)
        took = now_us()
        await async_wait_for(lambda: standby.lease.leading, 5, what="the standby to take the lease")
        new = standby.lease.value
        assert new is not None and Holder.parse(new).token > Holder.parse(old).token  # type: ignore[union-attr]

        async def republished() -> bool:
            values = [await admin.get(KEYS.book(i.id)) for i in instruments]
            return all(v is not None and schema.decode(v)["pts"] >= took for v in values)

        await async_wait_for(republished, 10, what="every book republished by the new leader")
        # The old leader's drain, as it would send it had it only been paused: every slot refuses it.
        stale = Drain(instruments=b"[]", books=[(KEYS.book(i.id).encode(), b"stale") for i in instruments])
        commands = slot_commands(stale, "md", 10, old)
        assert len(commands) > 150, "200 instruments, about as many slots"
        for command in commands:
            with pytest.raises(ResponseError) as refused:
                await run_script(admin, command)
            assert refusal(str(refused.value)) == Holder.parse(new)
        assert b"stale" not in [await admin.get(KEYS.book(i.id)) for i in instruments]
        assert await admin.get(KEYS.instruments) != b"[]"
        assert standby.stats.fenced_writes == 0 and standby.stats.publishes >= len(instruments)
    finally:
        for task in tasks:
            await stop(task)


async def script_calls(url: str, command: str) -> int:
    """How many times one node ran `command` (eval, evalsha), from its INFO commandstats."""
    client = aredis.Redis.from_url(url)
    try:
        return int((await client.info("commandstats")).get(f"cmdstat_{command}", {}).get("calls", 0))
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_scripts_go_as_evalsha_and_books_flow_on_when_a_node_forgets_them(
    sim200: str, cluster: RedisClusterServer, admin: RedisCluster
) -> None:
    """The drains send each script's SHA, not its text; a node whose script cache is emptied (as a restarted
    server's or a promoted replica's is) answers NOSCRIPT, and the same drain sends those scripts as EVAL."""
    async with running(settings(sim200, cluster)) as ing:
        instruments = await listed(admin)
        await async_wait_for(lambda: ing.stats.publishes > 2 * UNIVERSE, 15, what="books published")
        primaries = sorted(by_shard(cluster, instruments))
        urls = [node_url(cluster, port) for port in primaries]
        before, drains = [await script_calls(url, "evalsha") for url in urls], ing.stats.drains
        await async_wait_for(lambda: ing.stats.drains > drains + 20, 10, what="more drains")
        after = [await script_calls(url, "evalsha") for url in urls]
        assert all(a > b for a, b in zip(after, before)), "every primary runs the drains' scripts by their SHA"
        evals = [await script_calls(url, "eval") for url in urls]
        for url in urls:
            client = aredis.Redis.from_url(url)
            await client.script_flush()
            await client.aclose()
        flushed, reconnects = now_us(), ing.stats.redis_reconnects

        async def fresh() -> bool:
            values = [await admin.get(KEYS.book(i.id)) for i in instruments]
            return sum(v is not None and schema.decode(v)["pts"] > flushed for v in values) > UNIVERSE // 2

        await async_wait_for(fresh, 10, interval=0.1, what="books written after the script caches were flushed")
        again = [await script_calls(url, "eval") for url in urls]
        assert all(a > b for a, b in zip(again, evals)), "the scripts sent again as EVAL on every node"
        assert ing.stats.redis_reconnects == reconnects and ing.stats.fenced_writes == 0, "no drain failed for it"
        assert ing.redis_up


# -- a failover ------------------------------------------------------------------------------


async def promoted(cluster: RedisClusterServer, key: str, dead: int) -> float:
    """time.monotonic() when a node other than `dead` serves `key`'s slot (polled every 50 ms)."""
    while True:
        try:
            if await asyncio.to_thread(cluster.primary_for, key) != dead:
                return time.monotonic()
        except (RedisError, RedisServerError):
            pass  # no live node answers this very moment
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
@pytest.mark.parametrize("lease_shard", [False, True], ids=["another-shard", "the-lease-shard"])
async def test_a_killed_primary_heals_and_the_other_shards_keep_flowing(sim200: str, lease_shard: bool) -> None:
    """Kill -9 of a primary: its instruments' books are back within 15 s, and the other shards flow on
    meanwhile, even when it is the primary of the lease's own slot (nobody can renew or take the lease
    until the replica is promoted: the leader leads on, the slot fences keep a stale one out)."""
    own = await asyncio.to_thread(RedisClusterServer(3, 1, node_timeout=2.0).start)
    admin = RedisCluster.from_url(own.url, socket_timeout=None)
    try:
        async with running(settings(sim200, own)) as ing:
            instruments = await listed(admin)
            insts = {i.id: i for i in instruments}
            shards = by_shard(own, instruments)
            await async_wait_for(lambda: ing.lease.leading and ing.stats.publishes > UNIVERSE, 15, what="books published")
            leader_port = own.primary_for(KEYS.leader)
            victim = leader_port if lease_shard else next(port for port in shards if port != leader_port)
            others = [ShardListener(node_url(own, port), [KEYS.book(i.id) for i in shards[port]]) for port in shards if port != victim]
            for listener in others:
                await listener.__aenter__()
            try:
                await async_wait_for(lambda: all(x.messages for x in others), 10, what="books on the other shards")
                killed, killed_us = time.monotonic(), now_us()
                await asyncio.to_thread(own.kill, victim)

                async def healed() -> bool:
                    try:
                        values = [await admin.get(KEYS.book(i.id)) for i in shards[victim]]
                    except RedisError:
                        return False
                    return all(v is not None and schema.decode(v)["pts"] > killed_us for v in values)

                promotion = asyncio.create_task(promoted(own, KEYS.book(shards[victim][0].id), victim))
                await async_wait_for(healed, 15, interval=0.1, what="every book of the killed primary's instruments again")
                heal = time.monotonic() - killed
                promoted_after = await asyncio.wait_for(promotion, 5) - killed
            finally:
                for listener in others:
                    await listener.__aexit__()
            for inst in shards[victim]:
                verified(await admin.get(KEYS.book(inst.id)), insts, inst.id)
            # The promoted replica's script cache was empty: its books came by the EVAL sent again after NOSCRIPT.
            assert await script_calls(node_url(own, own.primary_for(KEYS.book(shards[victim][0].id))), "eval") > 0
            stalls = []
            for listener in others:  # the other shards: books all along while the dead one is retried
                arrivals = [t for _, _, t in listener.messages if t > killed]
                assert arrivals, "the other shards got books after the kill"
                stalls.append(max(b - a for a, b in zip([killed, *arrivals], [*arrivals, killed + heal])))
            assert max(stalls) < 1.5, f"another shard stalled {max(stalls):.1f} s while the dead one was retried"
            assert heal - promoted_after < 2.5, f"books came back {heal - promoted_after:.1f} s after the replica's promotion"
            print(f"replica promoted {promoted_after:.1f} s after the kill, books back {heal:.1f} s after the kill; "
                  f"longest stall of another shard {max(stalls):.2f} s")
    finally:
        await admin.aclose()
        await asyncio.to_thread(own.close)
