"""The simulator's events as marketdata.v1 wire bytes, without building protobuf objects.

Pure code (no gRPC, no I/O). The server serialises each generated block of events
once and shares the bytes among its subscribers; an EventBatch's encoding is the
concatenation of its events' encodings, so blocks of several instruments are
joined as bytes, never re-serialised.
"""

from __future__ import annotations

from collections.abc import Iterable

from marketdata.book import ASK, BID
from marketdata.sim.model import Event, Events, Snapshot, Update
from marketdata.v1 import market_data_pb2 as pb


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    if n < 0x80:
        return _BYTE[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 0x200000:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_BYTE = [bytes((n,)) for n in range(128)]
_SIDE_PRICE = {BID: b"\x08\x01\x10", ASK: b"\x08\x02\x10"}  # Level.side = BID/ASK, then Level.price's tag
_VARINT_CACHE = 1 << 18  # distinct prices and sizes remembered before the cache starts over


class WireEncoder:
    """Model events to EventBatch wire bytes, written by hand.

    Building protobuf message objects costs more than generating the events;
    writing the few field types of Update and Trade events directly costs about
    half as much and gives the same bytes (tests compare with protobuf's own
    encoding, fields in field-number order, so the epoch comes last). Snapshots,
    rare and large, go through protobuf. The varints of prices and sizes, which
    repeat, are cached.
    """

    __slots__ = ("_varints", "_heads")

    def __init__(self) -> None:
        self._varints: dict[int, bytes] = {}
        self._heads: dict[str, bytes] = {}

    def _cached(self, n: int) -> bytes:
        cache = self._varints
        if len(cache) >= _VARINT_CACHE:
            cache.clear()
        v = cache[n] = _varint(n)
        return v

    def events(self, events: Events) -> bytes:
        """One EventBatch of consecutive events of one instrument, checksum on the last."""
        head = self._heads.get(events.instrument)
        if head is None:
            name = events.instrument.encode()
            head = self._heads[events.instrument] = b"\x0a" + _varint(len(name)) + name + b"\x10"
        stamp = b"\x18" + _varint(events.ts)
        epoch = b"\x40" + _varint(events.epoch) if events.epoch else b""  # proto3 leaves a 0 out
        get = self._varints.get
        cached = self._cached
        byte = _BYTE
        side_price = _SIDE_PRICE
        out = []
        append = out.append
        seq = events.first_seq
        e = b""
        for body in events.bodies:
            if body.__class__ is Update:
                changes = body[0]
                if len(changes) == 1:  # the common case, in fewer steps
                    side, price, size = changes[0]
                    if size:
                        x = b"".join((side_price[side], get(price) or cached(price), b"\x18", get(size) or cached(size)))
                    else:
                        x = side_price[side] + (get(price) or cached(price))
                    b = b"".join((b"\x2a", byte[len(x) + 2], b"\x0a", byte[len(x)], x))
                else:
                    levels = []
                    for side, price, size in changes:
                        x = side_price[side] + (get(price) or cached(price))
                        if size:
                            x += b"\x18" + (get(size) or cached(size))
                        levels.append(b"\x0a" + byte[len(x)] + x)  # a level is at most 24 bytes
                    u = b"".join(levels)
                    b = b"\x2a" + (byte[len(u)] if len(u) < 0x80 else _varint(len(u))) + u
            else:
                price, size, aggressor = body  # type: ignore[misc]
                x = b"\x08" + (get(price) or cached(price)) + b"\x10" + (get(size) or cached(size))
                x += b"\x18\x01" if aggressor == BID else b"\x18\x02"
                b = b"\x32" + byte[len(x)] + x
            e = b"".join((head, _varint(seq), stamp, b, epoch))
            append(b"\x0a" + (byte[len(e)] if len(e) < 0x80 else _varint(len(e))) + e)
            seq += 1
        if events.checksum is not None and out:
            e = b"".join((e[: len(e) - len(epoch)], b"\x38", _varint(events.checksum), epoch))
            out[-1] = b"\x0a" + (byte[len(e)] if len(e) < 0x80 else _varint(len(e))) + e
        return b"".join(out)

    @staticmethod
    def snapshots(events: Iterable[Event]) -> bytes:
        """One EventBatch of snapshot events."""
        return pb.EventBatch(events=[snapshot_event(ev) for ev in events]).SerializeToString()


def pack(chunks: dict[str, list[tuple[bytes, int]]], wanted: frozenset[str] | None, max_batch: int) -> list[bytes]:
    """The chunks of the `wanted` instruments (None: all) joined into EventBatch messages of at most max_batch events.

    `chunks` maps an instrument to its encoded blocks and their event counts, in the
    order they were generated; an instrument's blocks stay in order, never split.
    """
    messages: list[bytes] = []
    parts: list[bytes] = []
    n = 0
    for name, instrument_chunks in chunks.items():
        if wanted is not None and name not in wanted:
            continue
        for data, count in instrument_chunks:
            if parts and n + count > max_batch:
                messages.append(b"".join(parts))
                parts, n = [], 0
            parts.append(data)
            n += count
    if parts:
        messages.append(parts[0] if len(parts) == 1 else b"".join(parts))
    return messages


def snapshot_event(event: Event) -> pb.Event:
    """A model snapshot event as a protobuf Event."""
    body = event.body
    if not isinstance(body, Snapshot):
        raise TypeError(f"not a snapshot event: {event!r}")
    return pb.Event(
        instrument=event.instrument,
        seq=event.seq,
        ts=event.ts,
        checksum=event.checksum,
        epoch=event.epoch,
        snapshot=pb.Snapshot(
            bids=[pb.Level(side=pb.SIDE_BID, price=p, size=s) for p, s in body.bids],
            asks=[pb.Level(side=pb.SIDE_ASK, price=p, size=s) for p, s in body.asks],
        ),
    )


def event_pb(event: Event) -> pb.Event:
    """Any model event as a protobuf Event (the slow, obvious way)."""
    body = event.body
    if isinstance(body, Snapshot):
        return snapshot_event(event)
    msg = pb.Event(instrument=event.instrument, seq=event.seq, ts=event.ts, epoch=event.epoch)
    if isinstance(body, Update):
        msg.update.changes.extend([pb.Level(side=s, price=p, size=z) for s, p, z in body.changes])
    else:
        msg.trade.price, msg.trade.size, msg.trade.aggressor = body
    if event.checksum is not None:
        msg.checksum = event.checksum
    return msg


def encode_events(events: Events | Iterable[Event]) -> bytes:
    """One EventBatch of model events: a generated block, or any events (snapshots included)."""
    if isinstance(events, Events):
        return WireEncoder().events(events)
    return pb.EventBatch(events=[event_pb(ev) for ev in events]).SerializeToString()
