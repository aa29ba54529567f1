"""Deltas end to end: a real Redis, real uvicorn, clients that keep their book from snapshots and deltas.

Books go out as the leading ingestor writes them: the simulator model's events through the
ingestor's own PublishQueue, written with its fenced drain commands (one EVAL: SET, the
delta's PUBLISH, the snapshot's PUBLISH); the Redis restart runs the real ingestor against
the real simulator. Every client applies what it gets with marketdata.delta.Replica, which
verifies each book's checksum; "exact" means it never saw a gap, a duplicate or a mismatch.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import orjson
import pytest
import redis
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection
from websockets.uri import parse_uri

from marketdata import delta, schema
from marketdata.clock import now_us
from marketdata.ingest.ingestor import Ingestor
from marketdata.ingest.lease import Fence
from marketdata.ingest.publish_queue import IngestStats, PublishQueue, drain_commands
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.settings import IngestSettings
from marketdata.sim.model import Model
from marketdata.supervisor.redis_server import RedisServer
from tests.conftest import RunningSim
from tests.integration.test_bridge import BOOK, Running, client, numsub, rclient, start_bridge  # noqa: F401 (fixtures)
from tests.support import BackgroundLoop, wait_for
from tests.unit.test_publish_queue import to_pb

BTC = DEFAULT_INSTRUMENTS[0]
DELTA = "md:delta:BTC-USD"
E1, E2 = 1_764_000_000_000_000, 1_764_000_900_000_000
EXACT = (delta.TAKEN, delta.APPLIED)


class Publisher:
    """BTC-USD books as the leading ingestor publishes them, one drain per `step`."""

    def __init__(self, client: redis.Redis, epoch: int = E1) -> None:
        self.client = client
        self.fence = Fence(b"md:leader", b"1 test-ingestor")
        client.set(self.fence.key, self.fence.value)  # the lease, held by this test
        self.lock = threading.Lock()
        self.last: tuple[bytes, bytes | None] = (b"", None)
        self.new_epoch(epoch)

    def new_epoch(self, epoch: int, seed: int = 3) -> tuple[bytes, bytes | None]:
        """A simulator run starts: a fresh model and queue, its first book (no delta)."""
        with self.lock:
            self.epoch = epoch
            self.model = Model((BTC,), random.Random(seed))
            self.queue = PublishQueue((BTC,), IngestSettings(), IngestStats())
            self.queue.instruments_due = False  # the test seeded the whole list
            return self._publish([to_pb(self.model.snapshot(BTC.id, now_us()))])

    def step(self, events: int = 3) -> tuple[bytes, bytes | None]:
        """A few events and the drain after them: (snapshot, delta)."""
        with self.lock:
            return self._publish([to_pb(e) for e in self.model.generate(BTC.id, events, ts=now_us())])

    def _publish(self, events: list[Any]) -> tuple[bytes, bytes | None]:
        for ev in events:
            ev.epoch = self.epoch
        self.queue.apply(events, now_us())
        drain = self.queue.take(now_us())
        for command in drain_commands(drain, b"md:instruments", 50, self.fence):
            self.client.execute_command(*command)
        books = [p for k, p in drain.books if k == BOOK.encode()]
        deltas = [d[1] for d in drain.deltas if d]
        self.last = (books[-1], deltas[-1] if deltas else None)
        return self.last

    @property
    def seq(self) -> int:
        return schema.decode(self.last[0])["seq"]


class Reader:
    """A client's book kept from the messages of one socket, each one verified (marketdata.delta.Replica)."""

    def __init__(self, recv: Callable[[float], str | bytes]) -> None:
        self.recv = recv
        self.replica = delta.Replica(BTC)
        self.seen: list[tuple[str, int, str]] = []  # (type, seq, verdict) of every book and delta
        self.texts: list[str] = []
        self.others: list[dict[str, Any]] = []

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next book or delta, applied; other messages are kept aside."""
        while True:
            text = self.recv(timeout)
            msg = schema.decode(text) if b'"type":"book"' in _b(text) or b'"type":"delta"' in _b(text) else orjson.loads(text)
            if msg["type"] in ("book", "delta"):
                break
            self.others.append(msg)
        replica = self.replica
        verdict = replica.snapshot(msg) if msg["type"] == "book" else replica.delta(msg)
        self.seen.append((msg["type"], msg["seq"], verdict))
        self.texts.append(text if isinstance(text, str) else text.decode())
        return msg

    def until(self, seq: int, timeout: float = 10.0, epoch: int | None = None) -> None:
        """Read until the book held is at `seq` (or later), of `epoch` if given."""
        deadline = time.monotonic() + timeout
        while self.replica.seq < seq or not self.replica.valid or (epoch is not None and self.replica.epoch != epoch):
            self.next(max(0.1, deadline - time.monotonic()))

    def kinds(self) -> list[str]:
        return [t for t, _, _ in self.seen]

    def assert_exact(self) -> None:
        bad = [s for s in self.seen if s[2] not in EXACT]
        assert not bad, f"the client saw {bad[:5]} (of {len(self.seen)} messages)"
        seqs = [s for _, s, _ in self.seen]
        assert seqs == sorted(set(seqs)), "a seq came twice or went back"

    def assert_holds(self, snapshot: bytes) -> None:
        """The book held is exactly `snapshot`'s: levels and checksum."""
        want = schema.decode(snapshot)
        r = self.replica
        assert (r.seq, r.epoch) == (want["seq"], want["epoch"])
        assert (r.bids, r.asks) == (schema.units(want["bids"], BTC), schema.units(want["asks"], BTC))


def _b(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def ws_reader(ws: ClientConnection) -> Reader:
    return Reader(lambda timeout: ws.recv(timeout=timeout))


@pytest.fixture
def publisher(rclient: redis.Redis) -> Publisher:
    return Publisher(rclient)


def test_deltas_after_the_first_snapshot_and_snapshot_sockets_get_the_same_bytes_as_before(
        start_bridge: Callable[..., Running], rclient: redis.Redis, publisher: Publisher, redis_url: str) -> None:
    bridge = start_bridge()
    with client(bridge.ws + "/ws/market_data/BTC-USD") as plain, client(bridge.ws + "/ws/market_data/BTC-USD?deltas=1") as one, \
            client(bridge.ws + "/ws") as mux, redis.Redis.from_url(redis_url).pubsub() as bus:
        mux.send('{"op":"subscribe","instruments":["BTC-USD"],"deltas":true}')
        bus.subscribe(BOOK)
        readers = [ws_reader(s) for s in (plain, one, mux)]
        for r in readers:
            assert r.next()["type"] == "book", "a socket starts from the snapshot"
        wait_for(lambda: numsub(rclient, DELTA) == 1 and numsub(rclient) == 2, what="one subscription per channel (and the test's own)")
        wait_for(lambda: bus.get_message(timeout=0.05) is not None, what="the test's own subscription")
        for _ in range(40):
            snapshot, changes = publisher.step()
            assert changes is not None
            for r in readers:
                r.next()
            assert readers[0].texts[-1].encode() == snapshot, "a socket that did not ask gets the snapshot's bytes"
            assert readers[1].texts[-1].encode() == readers[2].texts[-1].encode() == changes, "the delta's bytes, as published"
            while (m := bus.get_message(timeout=1.0)) is None or m["type"] != "message":
                pass
            assert m["data"] == snapshot, "what Redis carries on the book channel is unchanged"
        for r in readers:
            r.assert_exact()
            r.assert_holds(publisher.last[0])
        assert readers[0].kinds() == ["book"] * 41 and readers[1].kinds() == ["book"] + ["delta"] * 40
    hub = bridge.hub
    wait_for(lambda: hub.topic(BOOK.encode()) is None and hub.topic(DELTA.encode()) is None, what="no topic once the last socket is gone")
    wait_for(lambda: numsub(rclient, DELTA) == 0, what="the delta channel unsubscribed")
    text = bridge.get("/metrics").text
    assert 'bridge_books_rejected_total{reason="checksum"} 0.0' in text


def test_sockets_joining_while_books_flow_get_no_gap_and_no_duplicate(
        start_bridge: Callable[..., Running], rclient: redis.Redis, publisher: Publisher) -> None:
    bridge = start_bridge()
    stop = threading.Event()

    def flow() -> None:
        while not stop.is_set():
            publisher.step()
            time.sleep(0.002)

    feeder = threading.Thread(target=flow, daemon=True)
    feeder.start()
    with ExitStack() as sockets:
        try:
            readers = []
            for n in range(6):  # each joins at another point of the flow; the first subscribes the channels
                ws = sockets.enter_context(client(bridge.ws + ("/ws/market_data/BTC-USD?deltas=1" if n % 2 else "/ws?deltas=1")))
                if n % 2 == 0:
                    ws.send('{"op":"subscribe","instruments":["BTC-USD"]}')
                reader = ws_reader(ws)
                for _ in range(30):
                    reader.next()
                readers.append(reader)
        finally:
            stop.set()
            feeder.join(5)
        for reader in readers:
            reader.until(publisher.seq)
    for reader in readers:
        reader.assert_exact()
        reader.assert_holds(publisher.last[0])
        assert reader.kinds()[0] == "book" and reader.kinds().count("delta") > len(reader.seen) // 2, reader.kinds()


class StalledReader:
    """A WebSocket client with a 4 KB receive buffer that reads nothing until asked."""

    def __init__(self, url: str, port: int) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        self.texts: list[str] = []

    def recv(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self.texts:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            data = self.sock.recv(1 << 16)
            assert data, "the bridge closed the connection"
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    self.texts.append(event.data.decode())
        return self.texts.pop(0)

    def close(self) -> None:
        self.sock.close()


def test_a_slow_reader_gets_the_newest_snapshot_in_place_of_its_pending_deltas(
        start_bridge: Callable[..., Running], rclient: redis.Redis, publisher: Publisher) -> None:
    bridge = start_bridge(send_timeout=60.0)
    slow = StalledReader(bridge.ws + "/ws/market_data/BTC-USD?deltas=1", bridge.server.port)
    try:
        wait_for(lambda: numsub(rclient, DELTA) == 1, what="the delta subscription")
        topic = bridge.hub.topic(BOOK.encode())
        assert topic is not None
        (slot,) = topic.sinks
        deadline = time.monotonic() + 30
        while slot.stuck_since is None:  # deltas until the slow socket's buffers are full
            assert time.monotonic() < deadline, "the slow socket never backed up"
            publisher.step(events=20)
        conflated = bridge.stats.conflated
        for _ in range(60):
            publisher.step()
        assert bridge.stats.conflated > conflated, "pending deltas outweighing a snapshot are dropped"
        assert slot.pending <= 12, "what waits stays under a snapshot's worth"
        reader = Reader(slow.recv)
        reader.until(publisher.seq, timeout=20)
        for _ in range(5):  # and deltas again after the snapshot (one at a time: the bus conflates a backlog)
            publisher.step()
            reader.until(publisher.seq)
    finally:
        slow.close()
    reader.assert_exact()
    reader.assert_holds(publisher.last[0])
    kinds = reader.kinds()
    assert "book" in kinds[1:], "a snapshot took the place of the dropped deltas"
    assert kinds[-5:] == ["delta"] * 5
    assert bridge.stats.slow_consumer_closes == 0


def test_resync_sends_the_newest_snapshot_at_once_on_both_routes(
        start_bridge: Callable[..., Running], rclient: redis.Redis, publisher: Publisher) -> None:
    bridge = start_bridge()
    with client(bridge.ws + "/ws/market_data/BTC-USD?deltas=1") as one, client(bridge.ws + "/ws?deltas=1") as mux:
        mux.send('{"op":"subscribe","instruments":["BTC-USD"]}')
        readers = [ws_reader(one), ws_reader(mux)]
        for r in readers:
            r.next()
        wait_for(lambda: numsub(rclient, DELTA) == 1, what="the delta subscription")
        for _ in range(5):  # one at a time: a backlog read at once would be conflated to its newest snapshot
            publisher.step()
            for r in readers:
                r.until(publisher.seq)
        for r in readers:
            assert r.kinds()[-1] == "delta"
        for ws, r in zip((one, mux), readers):
            r.replica.valid = False  # as if the client had found its book wrong
            ws.send('{"op":"resync","instruments":["BTC-USD"]}')
        t0 = time.monotonic()
        for r in readers:
            msg = r.next()
            assert msg["type"] == "book" and msg["seq"] == publisher.seq, "the newest snapshot, not the next one"
            assert r.seen[-1][2] == delta.TAKEN
        assert time.monotonic() - t0 < 1.0
        publisher.step()
        for r in readers:
            assert r.next()["type"] == "delta", "deltas go on from the snapshot"
            r.assert_holds(publisher.last[0])
        mux.send('{"op":"resync","instruments":["ETH-USD"]}')
        error = orjson.loads(mux.recv(timeout=5))
        assert error == {"type": "error", "error": "bad_request", "message": "not subscribed to 'ETH-USD'"}
        one.send('{"op":"resync","instruments":["ETH-USD"]}')  # another instrument's: nothing
        publisher.step()
        assert readers[0].next()["type"] == "delta"
    for r in readers:
        assert all(v in EXACT for _, _, v in r.seen), "the resync's answer repeats the seq held, nothing else may"


def test_a_new_epoch_starts_with_its_snapshot_then_its_deltas(
        start_bridge: Callable[..., Running], rclient: redis.Redis, publisher: Publisher) -> None:
    bridge = start_bridge()
    with client(bridge.ws + "/ws/market_data/BTC-USD?deltas=1") as ws:
        reader = ws_reader(ws)
        reader.next()
        wait_for(lambda: numsub(rclient, DELTA) == 1, what="the delta subscription")
        for _ in range(30):
            publisher.step()
        reader.until(publisher.seq)
        old = len(reader.seen)
        _, none = publisher.new_epoch(E2, seed=9)  # the simulator restarts: seqs start again
        assert none is None, "no delta across epochs"
        for _ in range(5):  # one at a time: a backlog read at once would be conflated to its newest snapshot
            publisher.step()
            reader.until(publisher.seq, epoch=E2)
    reader.assert_holds(publisher.last[0])
    assert all(v in EXACT for _, _, v in reader.seen)
    new = reader.seen[old:]
    assert new[0][0] == "book" and new[0][1] < reader.seen[old - 1][1], "the new run starts with its snapshot, a reset"
    kinds = [k for k, _, _ in new]
    books = kinds.index("delta")  # more than one while the new epoch was being confirmed
    assert kinds[books:] == ["delta"] * (len(kinds) - books) and len(kinds) - books >= 3, f"then its deltas: {kinds}"


def test_a_redis_restart_in_the_middle_leaves_the_client_exact(
        start_bridge: Callable[..., Running], private_redis: RedisServer, sim: RunningSim, background_loop: BackgroundLoop) -> None:
    rc = redis.Redis.from_url(private_redis.url)
    settings = IngestSettings(sim=sim.address, redis_url=private_redis.url, instruments=("BTC-USD",), lease=0.5, heartbeat_ttl=1.0)
    ingestor = Ingestor(settings)
    task = asyncio.run_coroutine_threadsafe(ingestor.run(), background_loop.loop)
    try:
        wait_for(lambda: rc.exists(BOOK), what="the ingestor's first book")
        bridge = start_bridge(redis_url=private_redis.url)
        with client(bridge.ws + "/ws/market_data/BTC-USD?deltas=1") as ws:
            reader = ws_reader(ws)
            deadline = time.monotonic() + 20
            while reader.kinds().count("delta") < 50:
                assert time.monotonic() < deadline, f"deltas did not flow: {reader.kinds()[-10:]}"
                reader.next()
            before = reader.replica.seq
            deltas_before = reader.kinds().count("delta")
            private_redis.restart()  # comes back empty, on the same port
            deadline = time.monotonic() + 30
            while reader.kinds().count("delta") < deltas_before + 50:
                assert time.monotonic() < deadline, f"deltas did not flow again: {reader.kinds()[-10:]}"
                reader.next(timeout=10)
        assert reader.replica.seq > before
        reader.assert_exact()
        assert ingestor.stats.delta_publishes > 100
    finally:
        task.cancel()
        wait_for(task.done, what="the ingestor to stop")
        rc.close()
