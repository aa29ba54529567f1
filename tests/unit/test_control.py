"""The control messages of the WebSocket protocol: client ops parsed, answers encoded."""

from __future__ import annotations

import orjson
import pytest

from bridge import control
from bridge.control import Ping, RequestError, Subscribe, Unsubscribe, parse_request


def test_requests() -> None:
    assert parse_request('{"op":"ping"}') == Ping()
    assert parse_request(b'{"op":"subscribe","instruments":["A","B","A"],"trades":true}') == Subscribe(("A", "B"), True)
    assert parse_request('{"op":"subscribe","instruments":["A"]}') == Subscribe(("A",), False)
    assert parse_request('{"op":"unsubscribe","instruments":["A"]}') == Unsubscribe(("A",))


@pytest.mark.parametrize(
    ("frame", "code", "says"),
    [
        ("{nope", "bad_json", "not valid JSON"),
        ("[]", "bad_request", "JSON object"),
        ('{"instruments":["A"]}', "bad_request", "no \"op\""),
        ('{"op":"dance"}', "bad_request", "unknown op 'dance'"),
        ('{"op":"subscribe"}', "bad_request", "non-empty array"),
        ('{"op":"subscribe","instruments":[]}', "bad_request", "non-empty array"),
        ('{"op":"subscribe","instruments":[1]}', "bad_request", "not '1'"),
        ('{"op":"subscribe","instruments":["' + "x" * 65 + '"]}', "bad_request", "at most 64"),
        ('{"op":"subscribe","instruments":["A"],"trades":1}', "bad_request", "true or false"),
    ],
)
def test_bad_requests_name_what_is_wrong(frame: str, code: str, says: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_request(frame)
    assert err.value.code == code
    assert says in err.value.message


def test_answers() -> None:
    assert orjson.loads(control.subscribed(("A",))) == {"type": "subscribed", "instruments": ["A"]}
    assert orjson.loads(control.unsubscribed(("A",))) == {"type": "unsubscribed", "instruments": ["A"]}
    assert orjson.loads(control.PONG) == {"type": "pong"}
    assert orjson.loads(control.error("bad_json", "x")) == {"type": "error", "error": "bad_json", "message": "x"}
    assert orjson.loads(control.feed(False, 5, "heartbeat stale")) == {"type": "feed", "live": False, "since": 5, "reason": "heartbeat stale"}
    assert control.unknown_instrument("X") == "unknown instrument 'X'"
    assert len(control.unknown_instrument("Y" * 500)) < 100  # fits a close reason (123 bytes)


@pytest.mark.parametrize("query, expected", [(b"", 0), (b"batch_ms=0", 0), (b"batch_ms=16", 16), (b"x=1&batch_ms=1000", 1000)])
def test_batch_ms(query: bytes, expected: int) -> None:
    assert control.batch_ms(query) == expected


@pytest.mark.parametrize("query", [b"batch_ms=", b"batch_ms=-5", b"batch_ms=1001", b"batch_ms=1.5", b"batch_ms=%C2%B2", b"batch_ms=" + b"9" * 5000])
def test_a_bad_batch_ms_says_what_is_allowed(query: bytes) -> None:
    with pytest.raises(control.RequestError, match="from 0 to 1000"):
        control.batch_ms(query)


def test_the_limit_answers() -> None:
    message = control.too_many_instruments(100)
    assert "at most 100 instruments" in message
    assert orjson.loads(control.error(control.TOO_MANY_INSTRUMENTS, message))["error"] == "too_many_instruments"
    assert len(control.RATE_LIMITED.encode()) <= 123  # fits a close reason


def test_deltas_and_resync() -> None:
    assert control.parse_request('{"op":"subscribe","instruments":["A"],"deltas":true}') == control.Subscribe(("A",), False, True)
    assert control.parse_request('{"op":"subscribe","instruments":["A"]}').deltas is None  # type: ignore[union-attr]
    assert control.parse_request('{"op":"resync","instruments":["A","A","B"]}') == control.Resync(("A", "B"))
    with pytest.raises(control.RequestError, match="deltas"):
        control.parse_request('{"op":"subscribe","instruments":["A"],"deltas":1}')
    with pytest.raises(control.RequestError, match="instruments"):
        control.parse_request('{"op":"resync"}')
    assert [control.deltas(q) for q in (b"", b"deltas=1", b"batch_ms=16&deltas=true", b"deltas=0", b"deltas=1&deltas=0")] == [
        False, True, True, False, False]
    with pytest.raises(control.RequestError, match="deltas must be 1 or 0"):
        control.deltas(b"deltas=yes")
    assert control.not_subscribed(["X", "Y"]) == "not subscribed to 'X', 'Y'"
