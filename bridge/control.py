"""The control messages of the bridge's WebSocket protocol: client ops in, JSON answers out.

Pure code: bytes or text in, values or bytes out. Book and trade messages are the
data, not control: they go out as the exact bytes Redis delivered (see bridge.fanout).

Client requests on the multiplexed socket (/ws)::

    {"op":"subscribe","instruments":["BTC-USD",...],"trades":true,"deltas":true}
    {"op":"unsubscribe","instruments":[...]}
    {"op":"resync","instruments":[...]}
    {"op":"ping"}

Server answers: subscribed, unsubscribed, pong, error (codes bad_json,
bad_request, unknown_instrument, too_many_instruments) and feed; see
docs/architecture.md and the README. A binary frame is read like a text one.
`/ws?batch_ms=N` makes the socket send, every N ms, one frame
`{"type":"batch","messages":[...]}` holding those messages in order. `?deltas=1`
(on both routes) makes deltas the default of the socket's subscriptions; `resync`
(on both routes too) asks for a snapshot again after a gap or a checksum mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union
from urllib.parse import parse_qs

import orjson

MAX_INSTRUMENTS = 256  # ids in one request
MAX_ID_LENGTH = 64  # characters of an instrument id
MAX_BATCH_MS = 1000  # longest batch interval a socket may ask for (/ws?batch_ms=N)
_SHOWN = 40  # characters of a bad value quoted back in a message

BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_INSTRUMENT = "unknown_instrument"
TOO_MANY_INSTRUMENTS = "too_many_instruments"
RATE_LIMITED = "rate limit"  # the close reason (1008) of a socket over its ops rate


class RequestError(ValueError):
    """A client request the bridge cannot act on; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Subscribe:
    instruments: tuple[str, ...]
    trades: bool = False
    deltas: bool | None = None  # None: as the socket's ?deltas= says


@dataclass(frozen=True, slots=True)
class Resync:
    instruments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    instruments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    pass


Request = Union[Subscribe, Unsubscribe, Resync, Ping]


def shown(value: object) -> str:
    """A client-supplied value, quoted and cut short, for an error message or close reason."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def batch_ms(query_string: bytes) -> int:
    """The `batch_ms` of a /ws query string: an integer from 0 (absent: 0, a frame per message) to MAX_BATCH_MS."""
    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("batch_ms")
    if not values:
        return 0
    text = values[-1]
    if not (text.isascii() and text.isdigit() and len(text) <= 4 and int(text) <= MAX_BATCH_MS):
        raise RequestError(BAD_REQUEST, f"batch_ms must be an integer from 0 to {MAX_BATCH_MS}, not {shown(text)}")
    return int(text)


def deltas(query_string: bytes) -> bool:
    """The `deltas` of a WebSocket query string: 1 or true (deltas), 0 or false or absent (snapshots only)."""
    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("deltas")
    if not values:
        return False
    text = values[-1].lower()
    if text not in ("0", "1", "true", "false"):
        raise RequestError(BAD_REQUEST, f"deltas must be 1 or 0, not {shown(values[-1])}")
    return text in ("1", "true")


def parse_request(data: str | bytes) -> Request:
    """One client frame as a request; raise RequestError naming what is wrong."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise RequestError(BAD_JSON, "the frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RequestError(BAD_REQUEST, "a request is a JSON object with an \"op\" field")
    op = obj.get("op")
    if op == "ping":
        return Ping()
    if op == "subscribe":
        trades = obj.get("trades", False)
        with_deltas = obj.get("deltas")
        if not isinstance(trades, bool) or not isinstance(with_deltas, (bool, type(None))):
            raise RequestError(BAD_REQUEST, "\"trades\" and \"deltas\" must be true or false")
        return Subscribe(_instruments(obj), trades, with_deltas)
    if op == "unsubscribe":
        return Unsubscribe(_instruments(obj))
    if op == "resync":
        return Resync(_instruments(obj))
    if op is None:
        raise RequestError(BAD_REQUEST, "the request has no \"op\" (subscribe, unsubscribe, resync or ping)")
    raise RequestError(BAD_REQUEST, f"unknown op {shown(op)}: use subscribe, unsubscribe, resync or ping")


def _instruments(obj: dict[str, object]) -> tuple[str, ...]:
    ids = obj.get("instruments")
    if not isinstance(ids, list) or not ids:
        raise RequestError(BAD_REQUEST, "\"instruments\" must be a non-empty array of instrument ids")
    if len(ids) > MAX_INSTRUMENTS:
        raise RequestError(BAD_REQUEST, f"at most {MAX_INSTRUMENTS} instruments per request")
    for i in ids:
        if not isinstance(i, str) or not i or len(i) > MAX_ID_LENGTH:
            raise RequestError(BAD_REQUEST, f"instrument ids are non-empty strings of at most {MAX_ID_LENGTH} characters, not {shown(i)}")
    return tuple(dict.fromkeys(ids))


def not_subscribed(instruments: list[str]) -> str:
    """The answer to a resync of instruments the socket is not subscribed to."""
    return "not subscribed to " + ", ".join(shown(i) for i in instruments[:5]) + (", ..." if len(instruments) > 5 else "")


def unknown_instrument(instrument: str) -> str:
    """The one wording of the unknown-instrument answer (HTTP detail, close reason, error)."""
    return f"unknown instrument {shown(instrument)}"


def too_many_instruments(limit: int) -> str:
    """The answer to a subscribe that would take a socket past `limit` instruments."""
    return f"at most {limit} instruments per socket: unsubscribe some first, or open another socket"


def subscribed(instruments: tuple[str, ...]) -> bytes:
    return orjson.dumps({"type": "subscribed", "instruments": instruments})


def unsubscribed(instruments: tuple[str, ...]) -> bytes:
    return orjson.dumps({"type": "unsubscribed", "instruments": instruments})


PONG = orjson.dumps({"type": "pong"})


def error(code: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": code, "message": message})


def feed(live: bool, since: int, reason: str) -> bytes:
    """The feed state message; `since` is when this state began, µs since the epoch."""
    return orjson.dumps({"type": "feed", "live": live, "since": since, "reason": reason})
