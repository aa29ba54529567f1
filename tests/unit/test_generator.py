"""The load generator's per-socket logic (marketdata.loadtest.generator), driven without a network.

A `Client` is handed frames and a transport that records what it is asked to send, so
what it counts, files and answers is checked directly; the worker's sockets and pipes
run in tests/e2e/test_loadtest.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from picows import WSCloseCode, WSMsgType

from marketdata import schema
from marketdata.book import OrderBook
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.loadtest import generator, latency
from marketdata.loadtest.generator import Client, Tally
from marketdata.loadtest.worker import _reason, _since
from marketdata.loadtest.measurement import Report

BTC = DEFAULT_INSTRUMENTS[0]
NOW_US = 1_700_000_000_000_000


class Frame:
    """What Client reads of a picows frame."""

    def __init__(self, payload: bytes, msg_type: WSMsgType = WSMsgType.TEXT, close: tuple[int, str] = (1000, "")) -> None:
        self.payload = payload
        self.msg_type = msg_type
        self.payload_size = len(payload)
        self._close = close

    def get_payload_as_memoryview(self) -> memoryview:
        return memoryview(self.payload)

    def get_payload_as_bytes(self) -> bytes:
        return self.payload

    def get_close_code(self) -> int:
        return self._close[0]

    def get_close_reason(self) -> str:
        return self._close[1]


class Transport:
    """Records what the client sends; `paused` says whether it stopped reading."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.close_code: Any = None
        self.disconnected = False
        self.close_handshake = None
        self.paused = False
        self.underlying_transport = SimpleNamespace(pause_reading=self._pause)
        self.is_disconnected = False

    def _pause(self) -> None:
        self.paused = True

    def send(self, _kind: WSMsgType, data: bytes) -> None:
        self.sent.append(bytes(data))

    def send_close(self, code: Any) -> None:
        self.close_code = code

    def disconnect(self) -> None:
        self.disconnected = True


def book(seq: int, ts: int = NOW_US, pts: int = NOW_US, instrument: Any = BTC) -> Frame:
    """A book message as the bridge sends it (schema.encode_book)."""
    b = OrderBook(instrument.id)
    b.reset(seq, [(650000, 10)], [(650001, 10)])
    return Frame(schema.encode_book(instrument, b, 10, ts, pts, b.checksum()))


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator, "time", SimpleNamespace(time_ns=lambda: NOW_US * 1000))


def client(protocol: str = "single", stall: bool = False) -> tuple[Client, Tally, Transport]:
    tally, transport = Tally(), Transport()
    c = Client(tally, "BTC-USD", protocol, stall)
    c.on_ws_connected(transport)  # type: ignore[arg-type]
    return c, tally, transport


def test_books_are_counted_and_their_seq_checked() -> None:
    c, t, tr = client()
    for seq in (5, 6, 9, 9, 3, 4):  # 7 and 8 conflated; 9 repeated and 3 going back are regressions
        c.on_ws_frame(tr, book(seq))  # type: ignore[arg-type]
    assert (t.books, c.count, t.conflated, t.regressions, t.errors) == (6, 6, 2, 2, 0)
    assert t.bytes == sum(book(s).payload_size for s in (5, 6, 9, 9, 3, 4))
    assert t.open == 1 and not tr.paused


@pytest.mark.parametrize("delay_us", [0, 1, 63, 64, 65, 1_000, 123_456, latency.MAX_US, 10**13, -250])
def test_latency_is_filed_as_latency_bucket_files_it(delay_us: int) -> None:
    """The hot path inlines latency.bucket() twice: both copies must agree with it."""
    c, t, tr = client()
    c.on_ws_frame(tr, book(1, ts=NOW_US - delay_us, pts=NOW_US - delay_us // 2))  # type: ignore[arg-type]
    assert t.hist_ts[latency.bucket(delay_us)] == 1 and sum(t.hist_ts) == 1
    assert t.hist_pts[latency.bucket(delay_us // 2)] == 1 and sum(t.hist_pts) == 1
    assert t.max_ts == max(0, delay_us) and t.max_pts == max(0, delay_us // 2)


def test_a_book_for_another_instrument_is_an_error() -> None:
    c, t, tr = client()
    c.on_ws_frame(tr, book(1, instrument=DEFAULT_INSTRUMENTS[1]))  # type: ignore[arg-type]
    assert t.books == 1 and t.errors == 1
    assert t.error_samples == [f"book of {DEFAULT_INSTRUMENTS[1].id} on a socket for BTC-USD"]


def test_a_stalled_client_stops_reading_after_its_first_book() -> None:
    c, t, tr = client(stall=True)
    c.on_ws_frame(tr, book(1))  # type: ignore[arg-type]
    assert tr.paused and t.books == 1


@pytest.mark.parametrize(
    ("message", "stale", "error"),
    [
        (b'{"type":"feed","live":false}', 1, None),
        (b'{"type":"feed","live":true}', 0, None),
        (b'{"type":"subscribed","instruments":["BTC-USD"]}', 0, None),
        (b'{"type":"trade","instrument":"BTC-USD"}', 0, None),
        (b'{"type":"error","error":"unknown_instrument","message":"no DOGE"}', 0, "unknown_instrument: no DOGE"),
        (b'{"type":"hello"}', 0, "unknown message type 'hello'"),
        (b'{"type":"book","seq":1,"instrument":"BTC-USD"}', 0, "book without instrument/seq/ts/pts in that order"),
        (b"[1, 2]", 0, "not a JSON object"),
        (b"not json", 0, "not a JSON object"),
    ],
)
def test_other_messages(message: bytes, stale: int, error: str | None) -> None:
    c, t, tr = client()
    c.on_ws_frame(tr, Frame(message))  # type: ignore[arg-type]
    assert (t.books, t.others, t.stale_notices, t.bytes) == (0, 1, stale, len(message))
    if error is None:
        assert t.errors == 0, t.error_samples
    else:
        assert t.errors == 1 and t.error_samples[0].startswith(error), t.error_samples


def test_a_multiplexed_client_subscribes_on_connect() -> None:
    _, _, tr = client("multi")
    assert [orjson.loads(m) for m in tr.sent] == [{"op": "subscribe", "instruments": ["BTC-USD"], "trades": False}]


def test_a_socketio_client_answers_engineio_and_joins_the_room() -> None:
    c, t, tr = client("socketio")
    for packet in (b'0{"sid":"x","pingInterval":25000}', b'40{"sid":"y"}', b"2", b'44{"message":"nope"}'):
        c.on_ws_frame(tr, Frame(packet))  # type: ignore[arg-type]
    assert tr.sent == [b"40", b'42["subscribe","BTC-USD"]', b"3"]
    assert t.errors == 1 and "socket.io connect error" in t.error_samples[0]


def test_a_close_from_the_server_is_tallied_by_code_and_reason_and_answered() -> None:
    c, t, tr = client()
    c.on_ws_frame(tr, Frame(b"", WSMsgType.CLOSE, (1008, "slow consumer")))  # type: ignore[arg-type]
    assert dict(t.closed) == {"1008 slow consumer": 1}
    assert tr.close_code == 1008 and tr.disconnected
    c.on_ws_disconnected(tr)  # type: ignore[arg-type]
    assert t.open == 0 and dict(t.closed) == {"1008 slow consumer": 1}, "a closed socket is not also counted dropped"


def test_a_socket_dropped_without_a_close_frame_is_tallied() -> None:
    c, t, tr = client()
    c.on_ws_disconnected(tr)  # type: ignore[arg-type]
    assert dict(t.closed) == {"dropped without a close frame": 1}


def test_our_own_close_is_not_a_server_close() -> None:
    c, t, tr = client()
    c.close()
    assert tr.close_code == WSCloseCode.OK and tr.disconnected
    c.on_ws_disconnected(tr)  # type: ignore[arg-type]
    assert not t.closed


def test_error_samples_are_few_and_short() -> None:
    t = Tally()
    for n in range(8):
        t.error(f"{n}" * 300)
    assert t.errors == 8 and len(t.error_samples) == 5 and all(len(s) == 200 for s in t.error_samples)


def test_the_final_report_counts_from_the_reset() -> None:
    base = Report(worker=0, phase="running", window=1.0, cpu=0.2, connected=4, open=4, books=100, others=2,
                  regressions=1, error_samples=["old"], errors=1)
    base.hist_ts[latency.bucket(500)] = 100
    now = Report(worker=0, phase="running", window=3.5, cpu=0.7, connected=4, open=3, books=350, others=2,
                 regressions=1, error_samples=["old", "new"], errors=2, closed={"1008 slow": 1})
    now.hist_ts[latency.bucket(500)] = 300
    final = _since(now, base)
    assert (final.window, final.cpu, final.books, final.others, final.regressions, final.errors) == (2.5, pytest.approx(0.5), 250, 0, 0, 1)
    assert final.hist_ts[latency.bucket(500)] == 200 and sum(final.hist_ts) == 200
    assert final.error_samples == ["new"]
    assert (final.connected, final.open, final.closed) == (4, 3, {"1008 slow": 1}), "socket states stay as they are now"


def test_connect_failure_reasons_are_one_short_line() -> None:
    assert _reason(ConnectionRefusedError(111, "Connection refused")) == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert _reason(TimeoutError()) == "TimeoutError"
    assert len(_reason(ValueError("x" * 500 + "\nsecond line"))) == 160
