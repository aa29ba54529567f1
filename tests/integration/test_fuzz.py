"""The multiplexed socket's protocol, fuzzed: any frame gets its documented answer, and nobody else waits.

Hypothesis sends /ws random frames (text and binary, random JSON shapes, requests
near and far from valid ones, huge numbers, deep nesting, long strings, invalid
UTF-8) on a real uvicorn bridge with a real Redis. `expected` is the protocol as the
README states it: a `subscribed`, `unsubscribed` or `pong` answer, an error with its
code (valid JSON is what RFC 8259 and orjson, the bridge's parser, accept), or a
close: 1009 for a frame over --max-frame, 1007 for a text frame that is not UTF-8.
Meanwhile a second socket on the same bridge must get every published book on time.
The run is derandomized and keeps no example database, so it is the same every time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from itertools import pairwise
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from marketdata.instruments import DEFAULT_INSTRUMENTS
from tests.integration import test_bridge
from tests.integration.test_bridge import Running, client, publish, recv, snapshot
from tests.support import wait_for

rclient = test_bridge.rclient  # the fixtures, found by name here
start_bridge = test_bridge.start_bridge

MAX_FRAME = 4096
LISTED = [i.id for i in DEFAULT_INSTRUMENTS]
BOOK_EVERY = 0.05  # seconds between two books of the watched instrument
ON_TIME = 2.0  # seconds a book may come after the one before it
DATA = ("book", "trade", "feed")  # what a socket gets besides answers


# The close a text frame that is not UTF-8 gets: 1007, but uvicorn's wsproto implementation
# drops the connection without a close frame (the client sees 1006).
NOT_UTF8 = {"websockets-sansio": 1007, "wsproto": 1006}


def expected(text: bool, data: bytes, not_utf8: int = 1007) -> tuple[str, object] | int:
    """The documented answer to one frame: ("subscribed", ids), ("pong", None), ("error", code)... or a close code."""
    if len(data) > MAX_FRAME:
        return 1009
    if text:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return not_utf8
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ("error", "bad_json")
    if not isinstance(obj, dict):
        return ("error", "bad_request")
    op = obj.get("op")
    if op == "ping":
        return ("pong", None)
    if op not in ("subscribe", "unsubscribe"):
        return ("error", "bad_request")
    if op == "subscribe" and not isinstance(obj.get("trades", False), bool):
        return ("error", "bad_request")
    ids = obj.get("instruments")
    if not isinstance(ids, list) or not 1 <= len(ids) <= 256 or not all(isinstance(i, str) and 1 <= len(i) <= 64 for i in ids):
        return ("error", "bad_request")
    unique = list(dict.fromkeys(ids))
    if op == "unsubscribe":
        return ("unsubscribed", unique)
    if not set(unique) <= set(LISTED):
        return ("error", "unknown_instrument")
    return ("subscribed", unique)


def answer(ws: ClientConnection) -> tuple[str, object] | int:
    """What the bridge said to the last frame, in the form `expected` gives."""
    while True:
        try:
            msg = orjson.loads(ws.recv(timeout=5))
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else 1006
        kind = msg["type"]
        if kind in DATA:
            continue
        if kind == "error":
            assert msg["message"], "an error answer says what is wrong"
            return ("error", msg["error"])
        return (kind, msg.get("instruments"))


# -- the frames -------------------------------------------------------------------------------

scalars = (
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**200), max_value=2**200)  # beyond 64 bits too
    | st.text(max_size=80)
)  # fmt: skip
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=25)
ids = st.sampled_from(LISTED) | st.text(max_size=70) | json_values
near_valid = st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe"]), "instruments": st.lists(st.sampled_from(LISTED) | st.sampled_from(["NOPE", "btc-usd"]), min_size=1, max_size=4)},
    optional={"trades": st.booleans()},
)
requests = near_valid | st.fixed_dictionaries(
    {"op": st.sampled_from(["subscribe", "unsubscribe", "ping", "SUBSCRIBE", "dance", ""]) | json_values},
    optional={
        "instruments": st.lists(ids, max_size=6) | json_values,
        "trades": st.booleans() | json_values,
        "pad": st.text(max_size=20),
    },
)


def encoded(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


def deep(depth: int) -> bytes:
    return b'{"op":"ping","x":' + b"[" * depth + b"]" * depth + b"}"


def long_string(length: int) -> bytes:
    return b'{"op":"ping","pad":"' + b"x" * length + b'"}'


def not_utf8(data: bytes) -> bytes:
    return b'{"op":"ping","x":"' + data + b'\xff\xfe"}'


payloads = st.one_of(
    st.builds(encoded, near_valid, st.booleans()),
    st.builds(encoded, requests, st.booleans()),
    st.builds(encoded, json_values, st.booleans()),
    st.sampled_from([b"1e400", b"-1e999", b'{"op":"ping","n":1e400}', b"NaN", b"[1,]", b'{"op":"ping",}', b"", b" ", b"\x00"]),
    st.builds(deep, st.integers(min_value=1, max_value=1500)),
    st.builds(long_string, st.integers(min_value=3500, max_value=6000)),
    st.builds(not_utf8, st.binary(max_size=16)),
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
)
frames = st.tuples(st.booleans(), payloads)  # (a text frame?, its bytes)


# -- the test -----------------------------------------------------------------------------------


class Watcher:
    """A socket subscribed to BTC-USD on a thread of its own, noting when each book comes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ws.send('{"op":"subscribe","instruments":["BTC-USD"]}')
        assert recv(self.ws)["type"] == "subscribed"
        self.arrivals: list[float] = []
        self._thread = threading.Thread(target=self._run, name="fuzz-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                if orjson.loads(self.ws.recv())["type"] == "book":
                    self.arrivals.append(time.monotonic())
        except ConnectionClosed:
            return

    def worst_gap(self, until: float) -> float:
        times = [*self.arrivals, until]
        return max(b - a for a, b in pairwise(times))

    def stop(self) -> None:
        self.ws.close()
        self._thread.join(5)


@pytest.fixture
def books(rclient: redis.Redis) -> Iterator[Callable[[], int]]:
    """A BTC-USD book published every BOOK_EVERY seconds on a thread; yields how many so far."""
    stop = threading.Event()
    published = [0]

    def run() -> None:
        while not stop.wait(BOOK_EVERY):
            published[0] += 1
            publish(rclient, snapshot(published[0]))

    thread = threading.Thread(target=run, name="fuzz-publisher", daemon=True)
    thread.start()
    yield lambda: published[0]
    stop.set()
    thread.join(5)


@pytest.mark.slow
@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
def test_every_frame_gets_its_documented_answer_and_books_keep_flowing(
    start_bridge: Callable[..., Running], books: Callable[[], int], ws: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The rate limit has its own test (test_limits); here frames come as fast as answers.
    bridge = start_bridge(ws=ws, max_frame=MAX_FRAME, ops_rate=1e6, ops_burst=1_000_000)
    wait_for(lambda: books() > 0, what="the first book")
    stack = ExitStack()
    watcher = Watcher(stack.enter_context(client(bridge.ws + "/ws")))
    stack.callback(watcher.stop)
    sockets = [stack.enter_context(client(bridge.ws + "/ws"))]
    tried: list[object] = []

    @settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(frame=frames)
    def check(frame: tuple[bool, bytes]) -> None:
        text, data = frame
        want = expected(text, data, NOT_UTF8[ws])
        tried.append(want if isinstance(want, int) else want[0] if want[0] != "error" else want[1])
        sock = sockets[-1]
        sock.send(data, text=text)
        got = answer(sock)
        assert got == want, f"{'text' if text else 'binary'} frame {data[:80]!r}: expected {want}, got {got}"
        if isinstance(got, int):  # closed, as documented: carry on with a new socket
            sockets.append(stack.enter_context(client(bridge.ws + "/ws")))

    with stack:
        check()
        gap = watcher.worst_gap(time.monotonic())
        assert gap < ON_TIME, f"the watching socket waited {gap:.2f} s for a book while the other was fuzzed"
        assert watcher.arrivals, "the watching socket got no book"
    # The run reached every kind of answer, so it can fail on any of them.
    for kind in ("subscribed", "unsubscribed", "pong", "bad_json", "bad_request", "unknown_instrument", 1009, NOT_UTF8[ws]):
        assert kind in tried, f"no example got {kind!r}"
    wait_for(lambda: bridge.app.state.bridge.admission.total == 0 and bridge.hub.sockets == 0, what="every fuzzed socket to be released")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"bad input is not an error of the bridge: {errors[:3]}"
