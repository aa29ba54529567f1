"""The bridge end to end: real Redis, real uvicorn on a free port, real WebSocket clients.

Snapshots are published straight to Redis with the project's schema (PUBLISH + SET),
so no simulator or ingestor is needed here.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis
from fastapi import FastAPI
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from bridge.app import BridgeServer, build_server, create_app
from bridge.hub import Hub
from bridge.latest_slot import LatestSlot
from bridge.metrics import Stats
from marketdata import schema
from marketdata.book import OrderBook
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument, select
from marketdata.settings import BridgeSettings
from marketdata.supervisor.redis_server import RedisServer
from tests.support import wait_for

BTC, ETH = select(["BTC-USD", "ETH-USD"])
BOOK = "md:book:BTC-USD"
TRADES = "md:trades:BTC-USD"


def snapshot(seq: int, inst: Instrument = BTC, levels: int = 25) -> bytes:
    book = OrderBook(inst.id)
    mid = inst.reference_ticks
    book.reset(seq, [(mid - 1 - i, 3 + i) for i in range(levels)], [(mid + 1 + i, 2 + i) for i in range(levels)])
    return schema.encode_book(inst, book, levels, ts=seq, pts=seq, checksum=book.checksum())


def trade(seq: int) -> bytes:
    return schema.encode_trade(BTC, seq, ts=seq, price=BTC.reference_ticks, size=5, aggressor=0)


def seed(client: redis.Redis, heartbeat: bool = True) -> None:
    """What an ingestor leaves in Redis: the instrument list and a heartbeat."""
    client.set("md:instruments", schema.encode_instruments(DEFAULT_INSTRUMENTS))
    if heartbeat:
        client.set("md:heartbeat", schema.encode_heartbeat(int(time.time() * 1e6), "test"))


def publish(client: redis.Redis, payload: bytes, channel: str = BOOK) -> None:
    """As the ingestor's script does: SET the last-value key and PUBLISH, together (MULTI), in that order."""
    pipe = client.pipeline(transaction=True)
    pipe.set(channel, payload)
    pipe.publish(channel, payload)
    pipe.execute()


@dataclass
class Running:
    app: FastAPI
    server: BridgeServer
    thread: threading.Thread

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    @property
    def hub(self) -> Hub:
        return self.app.state.bridge.hub()

    @property
    def stats(self) -> Stats:
        return self.app.state.bridge.stats

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.http + path, trust_env=False, timeout=5)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "the bridge did not stop"


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    seed(client)
    yield client
    client.close()


@pytest.fixture
def start_bridge(bridge_url: str) -> Iterator[Callable[..., Running]]:
    """Start bridges (uvicorn on a free port, its own loop on a thread) and stop them after the test."""
    started: list[Running] = []

    def start(**overrides: Any) -> Running:
        values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "redis_url": bridge_url, "stale_after": 30.0, "send_timeout": 1.0}
        values.update(overrides)
        settings = BridgeSettings(**values)
        app = create_app(settings)
        server = build_server(settings, app)
        thread = threading.Thread(target=server.run, name="bridge", daemon=True)
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), what="the bridge to listen")
        assert server.started, "the bridge did not start"
        running = Running(app, server, thread)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def client(url: str, **kw: Any) -> ClientConnection:
    return connect(url, proxy=None, open_timeout=5, close_timeout=1, **kw)


def recv(ws: ClientConnection, timeout: float = 5.0, skip_feed: bool = True) -> dict[str, Any]:
    """The next message (feed messages skipped unless asked for)."""
    while True:
        msg = orjson.loads(ws.recv(timeout=timeout))
        if not (skip_feed and msg["type"] == "feed"):
            return msg


def recv_raw(ws: ClientConnection, timeout: float = 5.0) -> str:
    """The next book or trade, as the text frame carried it."""
    while True:
        text = ws.recv(timeout=timeout)
        assert isinstance(text, str), "the bridge sends text frames"
        if '"type":"feed"' not in text:
            return text


def numsub(client: redis.Redis, channel: str = BOOK) -> int:
    return dict(client.pubsub_numsub(channel))[channel.encode()]


def test_two_bridges_forward_the_same_bytes(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    publish(rclient, snapshot(1))
    one, two = start_bridge(), start_bridge()
    with client(one.ws + "/ws/market_data/BTC-USD") as a, client(two.ws + "/ws/market_data/BTC-USD") as b:
        assert recv_raw(a) == recv_raw(b) == snapshot(1).decode()
        wait_for(lambda: numsub(rclient) == 2, what="each bridge to subscribe once")
        sent = [snapshot(seq, levels=5 + seq) for seq in range(2, 22)]
        for payload in sent:
            publish(rclient, payload)
        expected = [p.decode() for p in sent]
        for ws in (a, b):
            # Books are states: a bridge may skip some of a burst, but what it sends is
            # byte for byte what was published, in order, up to the newest.
            got = [recv_raw(ws)]
            while got[-1] != expected[-1]:
                got.append(recv_raw(ws))
            assert all(text in expected for text in got)
            assert sorted(got, key=expected.index) == got


# uvicorn's "websockets" implementation is deprecated, and built on websockets' deprecated legacy API.
LEGACY = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")]


@pytest.mark.parametrize("ws", ["wsproto", pytest.param("websockets", marks=LEGACY)])
def test_other_uvicorn_websocket_implementations(start_bridge: Callable[..., Running], rclient: redis.Redis, ws: str) -> None:
    """Under uvicorn's other implementations frames go through plain ASGI send; the protocol is the same."""
    publish(rclient, snapshot(1))
    bridge = start_bridge(ws=ws)
    with client(bridge.ws + "/ws/market_data/BTC-USD") as a, client(bridge.ws + "/ws") as b:
        assert recv_raw(a) == snapshot(1).decode()
        b.send('{"op":"subscribe","instruments":["BTC-USD"]}')
        assert recv(b)["type"] == "subscribed"
        assert recv_raw(b) == snapshot(1).decode()
        topic = bridge.hub.topic(BOOK.encode())
        assert topic is not None and not any(box.raw for box in topic.sinks)  # type: ignore[attr-defined]
        wait_for(lambda: numsub(rclient) == 1, what="the subscription")
        publish(rclient, snapshot(2))
        assert recv_raw(a) == recv_raw(b) == snapshot(2).decode()
        bridge.stop()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                a.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def test_a_late_joiner_gets_the_last_value_at_once(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge()
    with client(bridge.ws + "/ws/market_data/BTC-USD") as first:
        first_msg = recv(first, skip_feed=False)
        assert first_msg["type"] == "feed" and first_msg["live"] is True
        wait_for(lambda: bridge.hub.subscriptions == 1, what="the subscription")
        wait_for(lambda: numsub(rclient) == 1, what="redis to see it")
        publish(rclient, snapshot(41))
        assert recv(first)["seq"] == 41
        rclient.delete(BOOK)  # from now on only the bridge's memory has it, and nothing new is published
        with client(bridge.ws + "/ws/market_data/BTC-USD") as late:
            assert recv(late)["seq"] == 41
        assert bridge.get("/api/book/BTC-USD").content == snapshot(41)  # from memory too


def test_one_subscription_per_instrument_whatever_the_sockets(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge()
    with ExitStack() as stack:
        sockets = [stack.enter_context(client(bridge.ws + "/ws/market_data/BTC-USD")) for _ in range(6)]
        mux = stack.enter_context(client(bridge.ws + "/ws"))
        mux.send(orjson.dumps({"op": "subscribe", "instruments": ["BTC-USD", "ETH-USD"], "trades": True}).decode())
        assert recv(mux)["type"] == "subscribed"
        wait_for(lambda: bridge.hub.subscriptions == 4, what="books and trades of BTC and ETH")
        wait_for(lambda: numsub(rclient) == 1 and numsub(rclient, TRADES) == 1, what="one redis subscription each")
        assert bridge.hub.sockets == 7
        for ws in sockets:
            ws.close()
        mux.send('{"op":"unsubscribe","instruments":["BTC-USD"]}')
        assert recv(mux) == {"type": "unsubscribed", "instruments": ["BTC-USD"]}
        wait_for(lambda: numsub(rclient) == 0 and numsub(rclient, TRADES) == 0, what="BTC unsubscribed after the last socket left")
        assert numsub(rclient, "md:book:ETH-USD") == 1
    wait_for(lambda: bridge.hub.subscriptions == 0 and bridge.hub.sockets == 0, what="nothing left")


class StalledClient:
    """A WebSocket client that completes the handshake and then reads nothing, until told to."""

    def __init__(self, url: str, port: int) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def read_to_close(self, timeout: float = 10.0) -> tuple[int, str]:
        """Read everything the bridge had sent, up to its close frame; return its code and reason."""
        self.sock.settimeout(timeout)
        while self.protocol.close_rcvd is None:
            data = self.sock.recv(1 << 16)
            if not data:
                break
            self.protocol.receive_data(data)
        self.sock.close()
        assert self.protocol.close_rcvd is not None, "the connection ended without a close frame"
        return self.protocol.close_rcvd.code, self.protocol.close_rcvd.reason


def test_a_slow_socket_conflates_and_is_closed_without_slowing_a_fast_one(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge(send_timeout=1.0)
    slow = StalledClient(bridge.ws + "/ws/market_data/BTC-USD", bridge.server.port)
    wait_for(lambda: bridge.hub.sockets == 1, what="the slow socket")
    with client(bridge.ws + "/ws/market_data/BTC-USD", max_size=None) as fast:
        wait_for(lambda: bridge.hub.subscriptions == 1 and bridge.hub.sockets == 2, what="both sockets")
        wait_for(lambda: numsub(rclient) == 1, what="the subscription")
        topic = bridge.hub.topic(BOOK.encode())
        assert topic is not None
        slow_box, fast_box = list(topic.sinks)  # in the order they joined
        assert isinstance(slow_box, LatestSlot) and isinstance(fast_box, LatestSlot)
        big = snapshot(0, levels=1500)  # about 60 KB
        seq = 0

        def push() -> None:
            nonlocal seq
            seq += 1
            publish(rclient, big.replace(b'"seq":0,', b'"seq":%d,' % seq, 1))
            while recv(fast)["seq"] != seq:  # the fast client gets the newest book, in time
                pass
            assert slow_box.pending <= 1 and fast_box.pending <= 1, "latest-only: at most one book waits per socket"

        deadline = time.monotonic() + 20
        while slow_box.stuck_since is None:  # big books until the slow socket's buffers are full
            assert time.monotonic() < deadline, "the slow socket never backed up"
            push()
        conflated = bridge.stats.conflated
        for _ in range(3):
            push()
        assert bridge.stats.conflated > conflated, "newer books replace the one waiting"
        wait_for(lambda: bridge.stats.slow_consumer_closes == 1, what="the slow consumer to be closed")
        push()  # the fast one goes on
        assert slow.read_to_close() == (1008, "slow consumer")  # after the backlog it had


def test_a_bridge_that_falls_behind_sends_only_the_newest_book(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge()
    with client(f"{bridge.ws}/ws/market_data/BTC-USD") as ws:
        publish(rclient, snapshot(1))
        assert recv(ws)["seq"] == 1
        # Hold the bridge's event loop while 200 books are published: they wait in its
        # socket, unread, as they do when the bridge is busier than the feed.
        held, release = threading.Event(), threading.Event()
        bridge.hub._loop.call_soon_threadsafe(lambda: (held.set(), release.wait(10)))
        assert held.wait(5), "the bridge's loop did not run the hold"
        try:
            for seq in range(2, 202):
                publish(rclient, snapshot(seq))
        finally:
            release.set()
        seqs = []
        while not seqs or seqs[-1] < 201:
            seqs.append(recv(ws)["seq"])
        assert seqs == sorted(seqs)
        assert len(seqs) < 20, f"{len(seqs)} of 200 backlogged books sent: not conflated"
        assert bridge.stats.bus_conflated >= 200 - len(seqs)


def test_unknown_instruments(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge()
    with client(bridge.ws + "/ws/market_data/NOPE") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "unknown instrument 'NOPE'")
    with client(bridge.ws + "/ws") as ws:
        ws.send('{"op":"subscribe","instruments":["BTC-USD","NOPE"]}')
        assert recv(ws) == {"type": "error", "error": "unknown_instrument", "message": "unknown instrument 'NOPE'"}
        ws.send('{"op":"ping"}')
        assert recv(ws) == {"type": "pong"}
    response = bridge.get("/api/book/NOPE")
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown instrument 'NOPE'"}


def test_bad_requests_get_answers_and_oversized_frames_1009(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge(max_frame=1024)
    with client(bridge.ws + "/ws") as ws:
        for frame, code in (
            ("{nope", "bad_json"),
            ('{"op":"dance"}', "bad_request"),
            ('{"op":"subscribe","instruments":"BTC-USD"}', "bad_request"),
            ('{"op":"subscribe","instruments":["BTC-USD"],"trades":"yes"}', "bad_request"),
            ("[1,2]", "bad_request"),
        ):
            ws.send(frame)
            answer = recv(ws)
            assert answer["type"] == "error" and answer["error"] == code, (frame, answer)
            assert answer["message"]
        ws.send('{"op":"ping"}')
        assert recv(ws) == {"type": "pong"}  # still open
        ws.send('{"op":"ping","pad":"' + "x" * 2000 + '"}')
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_a_disallowed_origin_is_refused(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge(allowed_origins=("https://dash.example",))
    with pytest.raises(InvalidStatus) as refused:
        client(bridge.ws + "/ws", origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert bridge.stats.origin_rejects == 1
    for origin in ("https://dash.example", f"http://127.0.0.1:{bridge.server.port}", None):
        with client(bridge.ws + "/ws/market_data/BTC-USD", origin=origin) as ws:  # type: ignore[arg-type]
            assert recv(ws, skip_feed=False)["type"] == "feed"
    metrics = bridge.get("/metrics").text
    assert "bridge_origin_rejects_total 1.0" in metrics


def test_redis_restart_keeps_sockets_open(start_bridge: Callable[..., Running], private_redis: RedisServer) -> None:
    rc = redis.Redis.from_url(private_redis.url)
    try:
        seed(rc)
        publish(rc, snapshot(1))
        bridge = start_bridge(redis_url=private_redis.url_for("bridge"))
        with client(bridge.ws + "/ws/market_data/BTC-USD") as ws:
            assert recv(ws, skip_feed=False)["live"] is True
            assert recv(ws)["seq"] == 1
            private_redis.restart()  # comes back empty, on the same port
            feed = recv(ws, skip_feed=False)
            assert feed["type"] == "feed" and feed["live"] is False, feed
            rc = redis.Redis.from_url(private_redis.url)
            seed(rc)
            while not (feed := recv(ws, skip_feed=False))["live"]:
                assert feed["type"] == "feed", feed
            wait_for(lambda: numsub(rc) == 1, what="the bridge to resubscribe")
            publish(rc, snapshot(2))
            assert recv(ws)["seq"] == 2
        assert bridge.stats.redis_reconnects >= 1
    finally:
        rc.close()


def test_a_bridge_started_before_redis_gets_ready_when_it_comes(start_bridge: Callable[..., Running], private_redis: RedisServer) -> None:
    private_redis.stop()
    bridge = start_bridge(redis_url=private_redis.url_for("bridge"))
    assert bridge.get("/readyz").json() == {"status": "unready", "reason": "redis unreachable"}
    private_redis.start()
    rc = redis.Redis.from_url(private_redis.url)
    try:
        seed(rc)
        wait_for(lambda: bridge.get("/readyz").status_code == 200, what="ready once Redis is up")
        with client(bridge.ws + "/ws/market_data/BTC-USD") as ws:
            wait_for(lambda: numsub(rc) == 1, what="the subscription")
            publish(rc, snapshot(3))
            assert recv(ws)["seq"] == 3
    finally:
        rc.close()


def test_garbage_on_a_channel_is_counted_and_dropped(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge()
    with client(bridge.ws + "/ws/market_data/BTC-USD") as ws:
        wait_for(lambda: numsub(rclient) == 1, what="the subscription")
        # One at a time: a bridge that reads several books of a channel at once checks only the newest.
        for n, junk in enumerate((b"not json", b'{"v":1,"type":"book","seq":}', snapshot(5)[:-10]), 1):
            rclient.publish(BOOK, junk)
            wait_for(lambda n=n: bridge.stats.bad_messages == n, what=f"bad message {n} counted")
        publish(rclient, snapshot(5))
        assert recv_raw(ws) == snapshot(5).decode()
    assert "bridge_bad_messages_total 3.0" in bridge.get("/metrics").text


class Heartbeat:
    """What the ingestor does: refresh the heartbeat key well within stale_after, on a thread."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self) -> None:
        while not self.stop.is_set():
            self.client.set("md:heartbeat", schema.encode_heartbeat(int(time.time() * 1e6), "test"), px=10_000)
            self.stop.wait(0.1)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_readyz_follows_the_heartbeat(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge(stale_after=1.5)
    with Heartbeat(rclient):
        wait_for(lambda: bridge.get("/readyz").status_code == 200, what="ready")
    rclient.delete("md:heartbeat")
    wait_for(lambda: bridge.get("/readyz").status_code == 503, what="unready")
    assert bridge.get("/readyz").json() == {"status": "unready", "reason": "no heartbeat from the ingestor"}
    assert bridge.get("/healthz").status_code == 200
    with Heartbeat(rclient):
        wait_for(lambda: bridge.get("/readyz").status_code == 200, what="ready again")
    # The key outlives the last refresh: its age tells.
    wait_for(lambda: bridge.get("/readyz").json().get("reason") == "heartbeat stale", what="stale once refreshes stop")


def test_multiplexed_trades_and_books(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    publish(rclient, snapshot(10))
    publish(rclient, snapshot(3, ETH), "md:book:ETH-USD")
    for seq in (7, 8, 9):
        rclient.lpush(TRADES, trade(seq))
    bridge = start_bridge()
    with client(bridge.ws + "/ws") as ws:
        ws.send('{"op":"subscribe","instruments":["BTC-USD","ETH-USD"],"trades":true}')
        assert recv(ws) == {"type": "subscribed", "instruments": ["BTC-USD", "ETH-USD"]}
        got = [recv(ws) for _ in range(5)]
        assert sorted((m["type"], m["instrument"], m["seq"]) for m in got) == [
            ("book", "BTC-USD", 10), ("book", "ETH-USD", 3), ("trade", "BTC-USD", 7), ("trade", "BTC-USD", 8), ("trade", "BTC-USD", 9)
        ]
        assert [m["seq"] for m in got if m["type"] == "trade"] == [7, 8, 9]  # oldest first
        wait_for(lambda: numsub(rclient, TRADES) == 1, what="the trades subscription")
        rclient.publish(TRADES, trade(10))
        publish(rclient, snapshot(11))
        live = [recv(ws) for _ in range(2)]
        assert sorted((m["type"], m["seq"]) for m in live) == [("book", 11), ("trade", 10)]


def test_batched_socket_gets_every_trade_and_the_newest_book_per_frame(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    publish(rclient, snapshot(1))
    bridge = start_bridge()
    with client(bridge.ws + "/ws?batch_ms=200") as ws:
        ws.send('{"op":"subscribe","instruments":["BTC-USD"],"trades":true}')
        first = orjson.loads(ws.recv(timeout=5))
        assert first["type"] == "batch"
        wait_for(lambda: numsub(rclient, TRADES) == 1, what="the trades subscription")
        trades = [trade(seq) for seq in range(20, 26)]
        books = [snapshot(seq) for seq in range(2, 8)]
        for t, b in zip(trades, books):
            rclient.publish(TRADES, t)
            publish(rclient, b)
        # Each item is the payload byte for byte: find them in the frame's text.
        texts = []
        while books[-1].decode() not in "".join(texts):
            text = ws.recv(timeout=5)
            assert text.startswith('{"type":"batch","messages":[')
            texts.append(text)
        got = [m for text in texts for m in orjson.loads(text)["messages"]]
        assert [m["seq"] for m in got if m["type"] == "trade"] == list(range(20, 26))
        book_seqs = [m["seq"] for m in got if m["type"] == "book"]
        assert book_seqs == sorted(book_seqs) and book_seqs[-1] == 7
        assert len(book_seqs) <= len(texts), "more than one book per frame: not conflated"
        assert all(t.decode() in "".join(texts) for t in trades)
    with client(bridge.ws + "/ws?batch_ms=soon") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1008 and "batch_ms must be" in closed.value.rcvd.reason


def test_http_routes(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge()
    assert bridge.get("/api/instruments").content == schema.encode_instruments(DEFAULT_INSTRUMENTS)
    response = bridge.get("/api/book/BTC-USD")
    assert response.status_code == 503  # listed, nothing published yet
    publish(rclient, snapshot(4))
    response = bridge.get("/api/book/BTC-USD")
    assert response.status_code == 200 and response.content == snapshot(4)
    assert response.headers["content-type"] == "application/json"
    page = bridge.get("/")
    assert page.status_code == 200 and "html" in page.headers["content-type"]
    metrics = bridge.get("/metrics").text
    for name in (
        "bridge_sockets_open", "bridge_subscriptions", "bridge_messages_in_total", "bridge_messages_out_total",
        "bridge_conflated_total", "bridge_bad_messages_total", "bridge_send_latency_seconds_bucket",
        "bridge_slow_consumer_closes_total", "bridge_origin_rejects_total",
    ):
        assert f"\n{name}" in metrics, name


def test_shutdown_closes_sockets_with_1001(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    bridge = start_bridge()
    with client(bridge.ws + "/ws/market_data/BTC-USD") as ws:
        recv(ws, skip_feed=False)
        bridge.stop()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
