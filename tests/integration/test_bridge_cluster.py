"""The bridge on a real Redis Cluster (3 primaries, a replica each): sharded pub/sub, healing per shard.

Books are published as the cluster ingestor does (SET of `md:book:{ID}`, then SPUBLISH
on the same name), by one thread per instrument with its own cluster client that
retries, so a dead shard slows only its own instruments. Each socket reads in a thread
of its own and keeps when each book came.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
import redis
from redis.cluster import RedisCluster
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bridge.app import build_server, create_app
from marketdata import schema
from marketdata.book import OrderBook
from marketdata.instruments import Instrument, universe
from marketdata.schema import Keys
from marketdata.settings import BridgeSettings
from marketdata.slots import key_slot
from marketdata.supervisor.redis_cluster import RedisClusterServer
from tests.support import wait_for

KEYS = Keys("md", cluster=True)
PER_SHARD = 2  # instruments on each primary
PUBLISH_EVERY = 0.02  # seconds between an instrument's books
HEAL_WITHIN = 15.0  # seconds from the kill to fresh books on every socket of the dead shard
MAX_GAP = 1.0  # seconds the other shards' sockets may go without a book


def snapshot(inst: Instrument, seq: int) -> bytes:
    book = OrderBook(inst.id)
    mid = inst.reference_ticks
    book.reset(seq, [(mid - 1 - i, 3 + i) for i in range(5)], [(mid + 1 + i, 2 + i) for i in range(5)])
    return schema.encode_book(inst, book, 5, ts=seq, pts=seq, checksum=book.checksum())


def spread(cluster: RedisClusterServer) -> dict[int, list[Instrument]]:
    """PER_SHARD instruments on each primary (its port -> them)."""
    shards: dict[int, list[Instrument]] = {}
    for inst in universe(60):
        mine = shards.setdefault(cluster.primary_for(KEYS.book(inst.id)), [])
        if len(mine) < PER_SHARD:
            mine.append(inst)
    assert len(shards) == 3 and all(len(v) == PER_SHARD for v in shards.values()), shards
    return shards


class Publisher:
    """One thread per instrument: SET + SPUBLISH a new book every PUBLISH_EVERY s, retrying through failovers."""

    def __init__(self, url: str, instruments: list[Instrument]) -> None:
        self._url = url
        self.seq = {i.id: 0 for i in instruments}  # the newest seq published
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in instruments]
        admin = RedisCluster.from_url(url)
        admin.set(KEYS.instruments, schema.encode_instruments(instruments))
        admin.set(KEYS.heartbeat, schema.encode_heartbeat(int(time.time() * 1e6), "test"))
        admin.close()

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self, inst: Instrument) -> None:
        client = RedisCluster.from_url(self._url, socket_timeout=1, socket_connect_timeout=1)
        key = KEYS.book(inst.id)
        seq = 0
        try:
            while not self._stop.wait(PUBLISH_EVERY):
                payload = snapshot(inst, seq + 1)
                try:
                    client.set(key, payload)
                    client.spublish(key, payload)
                except (redis.RedisError, OSError):
                    continue  # the shard fails over; the next round tries again
                seq += 1
                self.seq[inst.id] = seq
        finally:
            client.close()


@dataclass
class Reader:
    """One socket of one instrument, read in a thread: when each book came, and its seq."""

    url: str
    instrument: str
    books: list[tuple[float, int]] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Reader:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            with connect(f"{self.url}/ws/market_data/{self.instrument}", proxy=None, open_timeout=5, close_timeout=1) as ws:
                while not self._stop.is_set():
                    try:
                        msg = orjson.loads(ws.recv(timeout=0.2))
                    except TimeoutError:
                        continue
                    if msg["type"] == "book":
                        assert msg["instrument"] == self.instrument
                        self.books.append((time.monotonic(), msg["seq"]))
        except (ConnectionClosed, OSError, AssertionError, ValueError) as exc:  # the test sees it
            self.error = exc

    def newest(self) -> int:
        return self.books[-1][1] if self.books else 0

    def longest_gap(self, since: float, until: float) -> float:
        times = [since] + [t for t, _ in self.books if since < t < until] + [until]
        return max(b - a for a, b in itertools.pairwise(times))


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterServer]:
    """A cluster of this test's own, to kill a node of (set up before the bridge, so it stops after it)."""
    with RedisClusterServer(3, 1, node_timeout=2.0) as cluster:
        yield cluster


@pytest.fixture
def start_bridge() -> Iterator[Callable[..., str]]:
    """Start a cluster-mode bridge (uvicorn on a free port, its own loop on a thread); its ws:// URL."""
    stops: list[Callable[[], None]] = []

    def start(url: str, **overrides: Any) -> str:
        values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "redis_url": url, "redis_cluster": True, "stale_after": 30.0}
        settings = BridgeSettings(**{**values, **overrides})
        server = build_server(settings, create_app(settings))
        thread = threading.Thread(target=server.run, name="bridge", daemon=True)
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), what="the bridge to listen")
        assert server.started, "the bridge did not start"

        def stop() -> None:
            server.should_exit = True
            thread.join(15)
            assert not thread.is_alive(), "the bridge did not stop"

        stops.append(stop)
        return f"ws://127.0.0.1:{server.port}"

    yield start
    for stop in stops:
        stop()


def read_all(url: str, shards: dict[int, list[Instrument]]) -> dict[int, list[Reader]]:
    return {port: [Reader(url, i.id).start() for i in insts] for port, insts in shards.items()}


@contextmanager
def live(cluster: RedisClusterServer, start_bridge: Callable[..., str]) -> Iterator[tuple[Publisher, dict[int, list[Instrument]], dict[int, list[Reader]]]]:
    """Books of PER_SHARD instruments on each shard published, a bridge, and a socket per instrument getting them live."""
    shards = spread(cluster)
    instruments = [i for insts in shards.values() for i in insts]
    with Publisher(cluster.url, instruments) as pub:
        wait_for(lambda: all(pub.seq.values()), what="a book of every instrument")
        url = start_bridge(cluster.url_for("bridge"))
        by_shard = read_all(url, shards)
        readers = [r for rs in by_shard.values() for r in rs]
        try:
            wait_for(lambda: all(r.newest() > 5 for r in readers), what="live books on every socket")
            yield pub, shards, by_shard
            assert all(r.error is None for r in readers)
        finally:
            for r in readers:
                r.stop()


def test_sockets_on_every_shard_get_verified_books(redis_cluster: RedisClusterServer, start_bridge: Callable[..., str]) -> None:
    redis_cluster.flush()
    with live(redis_cluster, start_bridge) as (pub, _, by_shard):
        marks = dict(pub.seq)
        readers = [r for rs in by_shard.values() for r in rs]
        wait_for(lambda: all(r.newest() > marks[r.instrument] + 5 for r in readers), what="books moving on every socket")
        assert len(by_shard) == 3 and all(len(rs) == PER_SHARD for rs in by_shard.values())


def test_a_dead_primary_heals_its_sockets_and_stalls_no_other(own_cluster: RedisClusterServer, start_bridge: Callable[..., str]) -> None:
    cluster = own_cluster
    with live(cluster, start_bridge) as (pub, shards, by_shard):
        victim = next(iter(shards))
        killed_at = time.monotonic()
        cluster.kill(victim)
        marks = {k: seq + 1 for k, seq in pub.seq.items()}  # + 1: one publish may have been under way at the kill
        dead = by_shard[victim]
        wait_for(lambda: all(r.newest() > marks[r.instrument] for r in dead), timeout=HEAL_WITHIN,
                 what="fresh books on every socket of the dead shard")
        healed = max(next(t for t, seq in r.books if seq > marks[r.instrument]) for r in dead) - killed_at
        others = [r for port, rs in by_shard.items() if port != victim for r in rs]
        now = {r.instrument: r.newest() for r in others}
        wait_for(lambda: all(r.newest() > now[r.instrument] + 10 for r in others), what="the other shards' books after the heal")
        until = time.monotonic()
        gaps = {r.instrument: round(r.longest_gap(killed_at, until), 2) for r in others}
        print(f"healed {healed:.1f} s after the kill; other shards' longest gaps {gaps}")
        assert all(g < MAX_GAP for g in gaps.values()), gaps


def admin(cluster: RedisClusterServer, port: int) -> redis.Redis:
    """The admin's client of one node."""
    parts = urlsplit(cluster.url)
    return redis.Redis.from_url(urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}")))


def migrate(cluster: RedisClusterServer, slot: int, source: int, target: int) -> None:
    """Move one slot and its keys from the primary on `source` to the one on `target`, as an operator would."""
    src, dst = admin(cluster, source), admin(cluster, target)
    try:
        src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "AUTH2", "admin", cluster.password("admin"), "KEYS", *keys)
        for client in (dst, src):
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    finally:
        src.close()
        dst.close()


def test_a_migrated_slot_moves_its_channel_to_the_new_owner(own_cluster: RedisClusterServer, start_bridge: Callable[..., str]) -> None:
    cluster = own_cluster
    with live(cluster, start_bridge) as (pub, shards, by_shard):
        source, target = list(shards)[:2]
        moving = by_shard[source][0]
        slot = key_slot(KEYS.book(moving.instrument))
        migrate(cluster, slot, source, target)
        moved_at = time.monotonic()
        wait_for(lambda: cluster.primary_for(KEYS.book(moving.instrument)) == target, what="the cluster to agree")
        mark = pub.seq[moving.instrument] + 1
        wait_for(lambda: moving.newest() > mark + 10, timeout=HEAL_WITHIN, what="books of the moved instrument from its new owner")
        gap = moving.longest_gap(moved_at - 1, time.monotonic())
        print(f"moved slot {slot}: the socket's longest gap {gap:.2f} s")
