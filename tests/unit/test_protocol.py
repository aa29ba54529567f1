"""The bridge's WebSocket protocol: client requests parsed, answers encoded."""

from __future__ import annotations

import orjson
import pytest

from bridge import protocol
from bridge.protocol import Ping, RequestError, Subscribe, Unsubscribe, parse_request


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
    assert orjson.loads(protocol.subscribed(("A",))) == {"type": "subscribed", "instruments": ["A"]}
    assert orjson.loads(protocol.unsubscribed(("A",))) == {"type": "unsubscribed", "instruments": ["A"]}
    assert orjson.loads(protocol.PONG) == {"type": "pong"}
    assert orjson.loads(protocol.error("bad_json", "x")) == {"type": "error", "error": "bad_json", "message": "x"}
    assert orjson.loads(protocol.feed(False, 5, "heartbeat stale")) == {"type": "feed", "live": False, "since": 5, "reason": "heartbeat stale"}
    assert protocol.unknown_instrument("X") == "unknown instrument 'X'"
    assert len(protocol.unknown_instrument("Y" * 500)) < 100  # fits a close reason (123 bytes)
