"""What the bridge's unit tests share: messages as the ingestor publishes them, and a socket that records."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from bridge.frames import Message
from marketdata import schema
from marketdata.book import OrderBook
from marketdata.instruments import Instrument, select

BTC, ETH = select(["BTC-USD", "ETH-USD"])
BOOK = b"md:book:BTC-USD"
TRADES = b"md:trades:BTC-USD"


def snapshot(seq: int, inst: Instrument = BTC, epoch: int = 0, checksum: int | None = None) -> bytes:
    """A book at (epoch, seq) as the ingestor encodes it; `checksum` replaces the true one (a corrupt book)."""
    book = OrderBook(inst.id, epoch=epoch)
    mid = inst.reference_ticks
    book.reset(seq, [(mid - 1 - i, 3 + i) for i in range(10)], [(mid + 1 + i, 2 + i) for i in range(10)])
    return schema.encode_book(inst, book, 25, ts=seq, pts=seq, checksum=book.checksum() if checksum is None else checksum)


def trade(seq: int, epoch: int = 0, inst: Instrument = BTC) -> bytes:
    return schema.encode_trade(inst, seq, ts=seq, price=inst.reference_ticks, size=5, aggressor=0, epoch=epoch)


@dataclass(eq=False)
class Sink:
    """Records what the hub hands a socket."""

    books: list[tuple[bytes, int]] = field(default_factory=list)
    trades: list[tuple[bytes, int]] = field(default_factory=list)
    deltas: list[tuple[bytes, int, int]] = field(default_factory=list)  # (key, prev_seq, seq)
    resyncs: list[tuple[bytes, int | None]] = field(default_factory=list)  # (key, seq of the snapshot given)
    got: list[Message] = field(default_factory=list)  # books and trades as handed over, in order
    feeds: list[dict[str, object]] = field(default_factory=list)
    forgotten: list[bytes] = field(default_factory=list)
    stuck_since: float | None = None
    slow_closed: bool = False
    closed: int | None = None

    def offer(self, key: bytes, msg: Message) -> None:
        self.books.append((key, msg.seq))
        self.got.append(msg)

    def offer_delta(self, key: bytes, msg: Message) -> None:
        self.deltas.append((key, msg.prev_seq, msg.seq))
        self.got.append(msg)

    def resync(self, key: bytes, latest: Message | None) -> None:
        self.resyncs.append((key, None if latest is None else latest.seq))

    def offer_trade(self, key: bytes, msg: Message) -> None:
        self.trades.append((key, msg.seq))
        self.got.append(msg)

    def offer_feed(self, msg: Message) -> None:
        self.feeds.append(orjson.loads(msg.payload))

    def forget(self, key: bytes) -> None:
        self.forgotten.append(key)

    def close_slow(self) -> None:
        self.slow_closed = True

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = code

    def seqs(self) -> list[int]:
        return [seq for _, seq in self.books]

    def places(self) -> list[tuple[int, int, bool]]:
        """(epoch, seq, reset) of every book and trade handed over."""
        return [(m.epoch, m.seq, m.reset) for m in self.got]
