"""The load generator's clients: one per WebSocket, read and tallied (picows listeners).

Each worker process (marketdata.loadtest.worker) opens many; all of them share the
worker's `Tally`. The per-frame path of a `Client` is written to cost about two
microseconds: one bounded regex over the frame's memory finds instrument, seq, ts
and pts without decoding the book. A `DeltaClient` asks for deltas and keeps its
book as a real client does (marketdata.delta): each delta must start at the book it
holds; one with a replica also applies it and verifies the checksum; a gap or a
mismatch asks the bridge for the snapshot again (`resync`).

Three protocols, one per kind of server measured:

- ``single``: ``/ws/market_data/{id}``, books arrive unasked (the bridge, the peers).
- ``multi``: the bridge's multiplexed ``/ws``; the client subscribes on connect.
- ``socketio``: a raw Engine.IO v4 / Socket.IO v5 WebSocket (no polling, no client
  library: the python-socketio client costs several times more per message); the
  client joins the instrument's room with ``42["subscribe","ID"]``.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from marketdata import delta, schema
from marketdata.errors import MessageError
from marketdata.loadtest import latency

log = logging.getLogger(__name__)

PROTOCOLS = ("single", "multi", "socketio")

# Every book carries these fields first and in this order (schema.encode_book); JSON
# re-encoded by a peer keeps the order. Searched within the first bytes of a frame.
_BOOK = re.compile(rb'"type":"book","instrument":"([^"]*)","seq":(\d+),"ts":(\d+),"pts":(\d+)')
_EPOCH = re.compile(rb',"epoch":(\d+)')
# And every delta these (schema.encode_delta).
_DELTA = re.compile(rb'"type":"delta","instrument":"([^"]*)","epoch":(\d+),"seq":(\d+),"prev_seq":(\d+),"ts":(\d+),"pts":(\d+)')
_HEAD = 320
_TEXT = WSMsgType.TEXT
_CLOSE = WSMsgType.CLOSE
_MAX_US = latency.MAX_US


class Tally:
    """The mutable counters one worker's sockets share (a single event loop: no locks)."""

    __slots__ = ("books", "others", "bytes", "regressions", "conflated", "errors", "error_samples",
                 "stale_notices", "hist_ts", "hist_pts", "max_ts", "max_pts", "closed", "open",
                 "deltas", "resyncs", "gaps", "checksum_failures", "verifying")

    def __init__(self) -> None:
        self.closed: Counter[str] = Counter()
        self.open = 0
        self.books = self.others = self.bytes = 0
        self.regressions = self.conflated = self.errors = self.stale_notices = 0
        self.error_samples: list[str] = []
        self.hist_ts = latency.new()
        self.hist_pts = latency.new()
        self.max_ts = self.max_pts = 0
        self.deltas = self.resyncs = self.gaps = self.checksum_failures = self.verifying = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what[:200])


class Client(WSListener):
    """One socket: counts books, checks their seq, files their latency."""

    __slots__ = ("tally", "instrument", "protocol", "last", "count", "stall", "transport", "closing")

    def __init__(self, tally: Tally, instrument: str, protocol: str, stall: bool) -> None:
        self.tally = tally
        self.instrument = instrument.encode()
        self.protocol = protocol
        self.last = -1
        self.count = 0
        self.stall = stall
        self.transport: WSTransport | None = None
        self.closing = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.tally.open += 1
        if self.protocol == "multi":
            request = {"op": "subscribe", "instruments": [self.instrument.decode()], "trades": False}
            transport.send(_TEXT, orjson.dumps(request))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.tally.open -= 1
        if not self.closing and not transport.close_handshake:
            self.tally.closed["dropped without a close frame"] += 1

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        m = _BOOK.search(frame.get_payload_as_memoryview(), 0, _HEAD)
        if m is None:  # rare: looked at more closely, off the hot path
            if frame.msg_type is _TEXT:
                self._other(transport, frame.get_payload_as_bytes())
            else:
                self._control_frame(transport, frame)
            return
        now = time.time_ns() // 1000
        t = self.tally
        name, seq, ts, pts = m.groups()
        seq = int(seq)
        t.books += 1
        t.bytes += frame.payload_size
        self.count += 1
        if name != self.instrument:
            t.error(f"book of {name.decode()} on a socket for {self.instrument.decode()}")
        last = self.last
        if seq > last:
            if last >= 0:
                t.conflated += seq - last - 1
        else:
            t.regressions += 1
        self.last = seq
        # latency.bucket() inlined, for ts then pts: two calls would add ~50 ns to this ~2 µs
        # per-message path. tests/unit/test_generator.py checks both copies against bucket().
        d = now - int(ts)
        if d > t.max_ts:
            t.max_ts = d
        if d < 64:
            i = d if d > 0 else 0
        else:
            if d > _MAX_US:
                d = _MAX_US
            s = d.bit_length() - 6
            i = (s << 5) + (d >> s)
        t.hist_ts[i] += 1
        d = now - int(pts)
        if d > t.max_pts:
            t.max_pts = d
        if d < 64:
            i = d if d > 0 else 0
        else:
            if d > _MAX_US:
                d = _MAX_US
            s = d.bit_length() - 6
            i = (s << 5) + (d >> s)
        t.hist_pts[i] += 1
        if self.stall:
            transport.underlying_transport.pause_reading()

    def _other(self, transport: WSTransport, data: bytes) -> None:
        """Anything but a book: the feed state, protocol answers, Engine.IO packets."""
        t = self.tally
        t.others += 1
        t.bytes += len(data)
        if self.protocol == "socketio":
            self._engineio(transport, data)
            return
        try:
            msg = orjson.loads(data)
            kind = msg.get("type")
        except (orjson.JSONDecodeError, AttributeError):
            t.error(f"not a JSON object: {data[:80]!r}")
            return
        if kind == "feed":
            if not msg.get("live"):
                t.stale_notices += 1
        elif kind == "error":
            t.error(f"{msg.get('error')}: {msg.get('message')}")
        elif kind == "book":
            t.error(f"book without instrument/seq/ts/pts in that order: {data[:120]!r}")
        elif kind not in ("subscribed", "unsubscribed", "pong", "trade"):
            t.error(f"unknown message type {kind!r}")

    def _engineio(self, transport: WSTransport, data: bytes) -> None:
        if data == b"2":  # Engine.IO ping: answer or be dropped
            transport.send(_TEXT, b"3")
        elif data.startswith(b"0{"):  # Engine.IO open: connect to the default namespace
            transport.send(_TEXT, b"40")
        elif data.startswith(b"40"):  # namespace joined: ask for the instrument's room
            transport.send(_TEXT, b'42["subscribe",' + orjson.dumps(self.instrument.decode()) + b"]")
        elif data.startswith(b"44"):
            self.tally.error(f"socket.io connect error: {data[:120]!r}")

    def _control_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is _CLOSE:
            if not self.closing:
                code = frame.get_close_code()
                code_n = code.value if isinstance(code, WSCloseCode) else int(code)
                self.tally.closed[f"{code_n} {frame.get_close_reason()}".strip()] += 1
                self.closing = True
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.closing = True
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()




def _file(t: Tally, now: int, ts: int, pts: int) -> None:
    """The latency of a delivery from `ts` and from `pts`, in the tally's histograms."""
    d = now - ts
    t.max_ts = max(t.max_ts, d)
    t.hist_ts[latency.bucket(d)] += 1
    d = now - pts
    t.max_pts = max(t.max_pts, d)
    t.hist_pts[latency.bucket(d)] += 1


class DeltaClient(Client):
    """A socket that asks for deltas and keeps its book as a real client does.

    Each delta must start at the book held (`prev_seq`), else it is a gap; with a
    `replica` (marketdata.delta.Replica) it is also applied and its checksum verified,
    and a snapshot's too. A gap or a mismatch in a delta asks the bridge for the
    snapshot again (`{"op":"resync"}`) and drops deltas until one comes.
    """

    __slots__ = ("_resync", "epoch", "replica", "waiting")

    def __init__(self, tally: Tally, instrument: str, protocol: str, stall: bool, replica: delta.Replica | None) -> None:
        super().__init__(tally, instrument, protocol, stall)
        self.replica = replica
        self.epoch = -1
        self.waiting = False
        self._resync = orjson.dumps({"op": "resync", "instruments": [instrument]})

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.tally.open += 1
        if self.protocol == "multi":
            request = {"op": "subscribe", "instruments": [self.instrument.decode()], "trades": False, "deltas": True}
            transport.send(_TEXT, orjson.dumps(request))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        view = frame.get_payload_as_memoryview()
        t = self.tally
        m = _DELTA.search(view, 0, _HEAD)
        if m is not None:
            name, epoch, seq, prev, ts, pts = m.groups()
            t.deltas += 1
            self._delta(transport, frame, int(epoch), int(seq), int(prev))
        else:
            m = _BOOK.search(view, 0, _HEAD)
            if m is None:
                if frame.msg_type is _TEXT:
                    self._other(transport, frame.get_payload_as_bytes())
                else:
                    self._control_frame(transport, frame)
                return
            name, seq, ts, pts = m.groups()
            e = _EPOCH.search(view, 0, _HEAD)
            self._snapshot(frame, int(e.group(1)) if e else 0, int(seq))
        t.books += 1
        t.bytes += frame.payload_size
        self.count += 1
        if name != self.instrument:
            t.error(f"{'delta' if m.re is _DELTA else 'book'} of {name.decode()} on a socket for {self.instrument.decode()}")
        _file(t, time.time_ns() // 1000, int(ts), int(pts))
        if self.stall:
            transport.underlying_transport.pause_reading()

    def _snapshot(self, frame: WSFrame, epoch: int, seq: int) -> None:
        t, last = self.tally, self.last
        if epoch == self.epoch and (seq < last or (seq == last and not self.waiting)):
            t.regressions += 1
            return
        if epoch == self.epoch and last >= 0:
            t.conflated += max(0, seq - last - 1)
        self.epoch, self.last, self.waiting = epoch, seq, False
        if self.replica is not None and self._replicated(self.replica.snapshot, frame) == delta.MISMATCH:
            t.checksum_failures += 1

    def _delta(self, transport: WSTransport, frame: WSFrame, epoch: int, seq: int, prev: int) -> None:
        t, last = self.tally, self.last
        if self.waiting or epoch != self.epoch:
            return  # a snapshot comes first: the one asked for, or the new epoch's
        if seq <= last:
            t.regressions += 1
            return
        if prev != last:
            t.gaps += 1
            self._ask(transport)
            return
        if self.replica is not None:
            verdict = self._replicated(self.replica.delta, frame)
            if verdict == delta.WAITING:  # its snapshot failed its checksum (counted): the next one heals it
                return
            if verdict != delta.APPLIED:
                if verdict == delta.MISMATCH:
                    t.checksum_failures += 1
                else:
                    t.gaps += 1
                self._ask(transport)
                return
        t.conflated += seq - prev - 1
        self.last = seq

    def _replicated(self, take: object, frame: WSFrame) -> str:
        try:
            return take(schema.decode(frame.get_payload_as_bytes()))  # type: ignore[operator, no-any-return]
        except MessageError as exc:
            self.tally.error(str(exc))
            return delta.MISMATCH

    def _ask(self, transport: WSTransport) -> None:
        self.waiting = True
        self.tally.resyncs += 1
        transport.send(_TEXT, self._resync)
