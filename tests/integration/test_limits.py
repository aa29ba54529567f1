"""The bridge's limits, each against a real uvicorn and real sockets: what is refused, how, and counted where.

Sockets per bridge (503) and per address (429) before the upgrade, X-Forwarded-For
only from a trusted proxy, the request-head deadline (408, then closed) under both
HTTP parsers, the ops rate (1008 "rate limit") and the instruments per socket (an
error answer). The bridge fixtures are test_bridge's.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response
from websockets.sync.client import ClientConnection

from tests.integration import test_bridge
from tests.integration.test_bridge import (
    Running,
    client,
    publish,
    recv,
    recv_raw,
    snapshot,
)
from tests.support import wait_for

rclient = test_bridge.rclient  # the fixtures, found by name here
start_bridge = test_bridge.start_bridge

Start = Callable[..., Running]
HTTP = ["httptools", "h11"]
WS = ["websockets-sansio", "wsproto"]


def refusals(bridge: Running) -> dict[str, float]:
    """bridge_refusals_total by reason, as /metrics shows it."""
    for family in text_string_to_metric_families(bridge.get("/metrics").text):
        if family.name == "bridge_refusals":
            return {s.labels["reason"]: s.value for s in family.samples if s.name == "bridge_refusals_total"}
    raise AssertionError("/metrics has no bridge_refusals family")


def refused(url: str, **kw: object) -> Response:
    """The HTTP answer to a WebSocket handshake the bridge refuses (fails if it accepts)."""
    with pytest.raises(InvalidStatus) as info, client(url, **kw):
        pass
    return info.value.response


def open_sockets(bridge: Running) -> int:
    return bridge.app.state.bridge.admission.total  # type: ignore[no-any-return]


@pytest.mark.parametrize("ws", WS)
def test_sockets_per_bridge_are_refused_503_with_retry_after(start_bridge: Start, rclient: redis.Redis, ws: str, caplog: pytest.LogCaptureFixture) -> None:
    bridge = start_bridge(ws=ws, max_sockets=3)
    with ExitStack() as stack:
        first = stack.enter_context(client(bridge.ws + "/ws"))
        stack.enter_context(client(bridge.ws + "/ws"))
        stack.enter_context(client(bridge.ws + "/ws/market_data/BTC-USD"))
        for path in ("/ws", "/ws/market_data/BTC-USD"):
            answer = refused(bridge.ws + path)
            assert answer.status_code == 503, answer
            assert answer.headers["retry-after"] == "5"
            assert b"no room" in (answer.body or b"")
        first.close()
        wait_for(lambda: open_sockets(bridge) == 2, what="the closed socket's room to come back")
        with client(bridge.ws + "/ws") as again:
            again.send('{"op":"ping"}')
            assert recv(again) == {"type": "pong"}
    assert refusals(bridge)["sockets_per_bridge"] == 2
    wait_for(lambda: open_sockets(bridge) == 0, what="every socket to be released")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"a refusal is not an error: {errors}"


@pytest.mark.parametrize("ws", WS)
def test_sockets_per_address_are_refused_429(start_bridge: Start, rclient: redis.Redis, ws: str) -> None:
    bridge = start_bridge(ws=ws, max_sockets_per_address=2, address_limit_exempt=())
    with client(bridge.ws + "/ws"), client(bridge.ws + "/ws/market_data/ETH-USD"):
        answer = refused(bridge.ws + "/ws")
        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "5"
        assert b"from your address" in (answer.body or b"")
    assert refusals(bridge)["sockets_per_address"] == 1
    wait_for(lambda: open_sockets(bridge) == 0, what="the address's sockets to be released")
    with client(bridge.ws + "/ws"), client(bridge.ws + "/ws"):
        pass  # room again


def test_loopback_is_exempt_from_the_per_address_limit_by_default(start_bridge: Start, rclient: redis.Redis) -> None:
    bridge = start_bridge(max_sockets_per_address=1)
    with client(bridge.ws + "/ws"), client(bridge.ws + "/ws"), client(bridge.ws + "/ws"):
        assert open_sockets(bridge) == 3
    assert refusals(bridge)["sockets_per_address"] == 0


def forwarded(bridge: Running, chain: str) -> ClientConnection:
    return client(bridge.ws + "/ws", additional_headers={"X-Forwarded-For": chain})


def test_x_forwarded_for_is_believed_from_a_trusted_proxy_only(start_bridge: Start, rclient: redis.Redis) -> None:
    # The test is the proxy, on 127.0.0.1: each client address gets one socket.
    proxied = start_bridge(trusted_proxies=("127.0.0.0/8",), max_sockets_per_address=1, address_limit_exempt=())
    with forwarded(proxied, "203.0.113.5"), forwarded(proxied, "203.0.113.6"):
        # The client wrote the left part itself: the right-most untrusted hop is still 203.0.113.5.
        assert refused(proxied.ws + "/ws", additional_headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}).status_code == 429
        # Behind two trusted proxies (127.0.0.2 appended what it saw): the same client.
        assert refused(proxied.ws + "/ws", additional_headers={"X-Forwarded-For": "203.0.113.6, 127.0.0.2"}).status_code == 429
    assert refusals(proxied)["sockets_per_address"] == 2

    # Not a trusted proxy: the header is the client's word and changes nothing.
    direct = start_bridge(max_sockets_per_address=1, address_limit_exempt=())
    with forwarded(direct, "203.0.113.5"):
        assert refused(direct.ws + "/ws", additional_headers={"X-Forwarded-For": "203.0.113.99"}).status_code == 429


def test_origin_refusals_are_counted_in_both_families(start_bridge: Start, rclient: redis.Redis) -> None:
    bridge = start_bridge(allowed_origins=("https://dash.example",))
    assert refused(bridge.ws + "/ws", origin="https://evil.example").status_code == 403
    assert refusals(bridge)["origin"] == 1
    assert "bridge_origin_rejects_total 1.0" in bridge.get("/metrics").text
    assert open_sockets(bridge) == 0  # a refused origin takes no room


# -- the request-head deadline --------------------------------------------------------------


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for a few thousand sockets (each half-open connection is two file descriptors here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * HALF_OPEN + 512
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


HALF_OPEN = 2000


@pytest.mark.slow
@pytest.mark.parametrize("http", HTTP)
def test_half_open_connections_are_closed_while_healthz_answers(start_bridge: Start, rclient: redis.Redis, many_files: None, http: str) -> None:
    bridge = start_bridge(http=http)  # the default deadline
    timeout = bridge.app.state.bridge.settings.handshake_timeout
    port = bridge.server.port
    selector = selectors.DefaultSelector()
    health: list[float] = []

    def healthz() -> None:
        began = time.monotonic()
        assert bridge.get("/healthz").status_code == 200
        health.append(time.monotonic() - began)

    began = time.monotonic()
    socks = []
    try:
        for i in range(HALF_OPEN):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /healthz HT")  # half a request line, never finished
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, bytearray())
            socks.append(sock)
            if i % 250 == 0:
                healthz()
        opened = time.monotonic() - began
        open_count, first_closed, answers = HALF_OPEN, None, 0
        deadline = began + 10.0
        next_health = 0.0
        while open_count and time.monotonic() < deadline:
            if time.monotonic() >= next_health:
                healthz()
                next_health = time.monotonic() + 0.2
            for key, _ in selector.select(timeout=0.05):
                sock, got = key.fileobj, key.data  # type: ignore[assignment]
                try:
                    data = sock.recv(4096)  # type: ignore[union-attr]
                except ConnectionResetError:
                    data = b""
                if data:
                    got += data
                    continue
                first_closed = first_closed or time.monotonic() - began
                answers += got.startswith(b"HTTP/1.1 408 ")
                selector.unregister(sock)
                open_count -= 1
        assert open_count == 0, f"{open_count} of {HALF_OPEN} half-open connections still open after 10 s"
        assert first_closed is not None and first_closed >= timeout - 0.5, f"closed after {first_closed:.1f} s, before the {timeout} s deadline"
        assert answers == HALF_OPEN, f"only {answers} connections got a 408 before the close"
        assert len(health) >= 10 and max(health) < 2.0, f"/healthz took up to {max(health):.2f} s ({len(health)} polls; opening took {opened:.1f} s)"
    finally:
        selector.close()
        for sock in socks:
            sock.close()
    assert refusals(bridge)["handshake_timeout"] == HALF_OPEN


def read_until_closed(sock: socket.socket, limit: float) -> bytes:
    sock.settimeout(limit)
    got = b""
    while True:
        data = sock.recv(4096)
        if not data:
            return got
        got += data


@pytest.mark.parametrize("http", HTTP)
def test_the_deadline_spares_complete_requests_and_open_websockets(start_bridge: Start, rclient: redis.Redis, http: str) -> None:
    bridge = start_bridge(http=http, handshake_timeout=0.5)
    port = bridge.server.port
    with client(bridge.ws + "/ws/market_data/BTC-USD") as ws:
        # A slowloris: bytes keep coming, but the head never ends; the deadline does not move.
        with closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as slow:
            began = time.monotonic()
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Slow: ")
            with pytest.raises(OSError):  # the bridge closes it while it still writes
                for _ in range(100):
                    slow.sendall(b"z")
                    time.sleep(0.05)  # the pace of the attack, not a wait for the bridge
            assert time.monotonic() - began < 2.0
        # A kept-alive connection: a whole request answered, then half of the next one: 408.
        with closing(socket.create_connection(("127.0.0.1", port), timeout=5)) as kept:
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
            assert kept.recv(4096).startswith(b"HTTP/1.1 200 ")
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: bri")
            assert read_until_closed(kept, 5).startswith(b"HTTP/1.1 408 ")
        # The WebSocket opened before all that, many deadlines ago, is served as ever.
        for seq in range(1, 4):
            publish(rclient, snapshot(seq))
            assert recv_raw(ws) == snapshot(seq).decode()
    assert refusals(bridge)["handshake_timeout"] == 2


# -- per socket ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws", "/ws/market_data/BTC-USD"])
def test_a_flood_of_frames_is_closed_1008_rate_limit(start_bridge: Start, rclient: redis.Redis, path: str) -> None:
    bridge = start_bridge(ops_rate=50.0, ops_burst=20)
    with client(bridge.ws + "/ws") as calm:
        with client(bridge.ws + path) as flood:
            began = time.monotonic()
            with contextlib.suppress(ConnectionClosed):  # sending fails once the bridge closed the socket
                for _ in range(20_000):
                    flood.send('{"op":"ping"}')
            answered = 0
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    answered += orjson.loads(flood.recv(timeout=5))["type"] == "pong"
            elapsed = time.monotonic() - began
        assert closed.value.rcvd is not None, "the bridge did not close the socket"
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "rate limit")
        assert answered <= 20 + 50 * elapsed + 1, f"{answered} pings answered in {elapsed:.2f} s"
        for _ in range(20):  # the other socket is untouched, and a whole burst at once is fine
            calm.send('{"op":"ping"}')
        assert [recv(calm) for _ in range(20)] == [{"type": "pong"}] * 20
    assert refusals(bridge)["rate_limit"] == 1


def test_instruments_per_socket_are_capped_with_an_error_answer(start_bridge: Start, rclient: redis.Redis) -> None:
    bridge = start_bridge(max_instruments=2)
    with client(bridge.ws + "/ws") as ws:
        ws.send('{"op":"subscribe","instruments":["BTC-USD","ETH-USD"]}')
        assert recv(ws) == {"type": "subscribed", "instruments": ["BTC-USD", "ETH-USD"]}
        ws.send('{"op":"subscribe","instruments":["SOL-USD"]}')
        answer = recv(ws)
        assert (answer["type"], answer["error"]) == ("error", "too_many_instruments")
        assert "at most 2 instruments" in answer["message"]
        ws.send('{"op":"subscribe","instruments":["BTC-USD"],"trades":true}')  # not a third one
        assert recv(ws) == {"type": "subscribed", "instruments": ["BTC-USD"]}
        ws.send('{"op":"unsubscribe","instruments":["ETH-USD"]}')
        assert recv(ws) == {"type": "unsubscribed", "instruments": ["ETH-USD"]}
        ws.send('{"op":"subscribe","instruments":["SOL-USD"]}')
        assert recv(ws) == {"type": "subscribed", "instruments": ["SOL-USD"]}
    assert refusals(bridge)["instruments_per_socket"] == 1
