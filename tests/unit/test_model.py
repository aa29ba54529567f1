"""The order-flow model: deterministic, never crossed, depth bounded, rebuildable from its events."""

from __future__ import annotations

import ast
import dataclasses
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

import marketdata.sim.model
from marketdata.book import ASK, BID
from marketdata.errors import UnknownInstrument
from marketdata.feed import Books
from marketdata.instruments import DEFAULT_INSTRUMENTS, universe
from marketdata.sim.model import (
    Event,
    Events,
    Model,
    ModelConfig,
    Snapshot,
    Trade,
    Update,
)
from marketdata.sim.wire import WireEncoder
from marketdata.v1 import market_data_pb2 as pb

IDS = [inst.id for inst in DEFAULT_INSTRUMENTS]
TS = 1_700_000_000_000_000


def wire(events: Iterable[Event] | Events) -> list[pb.Event]:
    """Events as a consumer receives them: through the server's encoder and protobuf."""
    encoder = WireEncoder()
    data = encoder.events(events) if isinstance(events, Events) else encoder.snapshots(events)
    return list(pb.EventBatch.FromString(data).events)


def model(seed: int = 7, config: ModelConfig | None = None) -> Model:
    return Model(DEFAULT_INSTRUMENTS, random.Random(seed), config)


def test_model_imports_no_io() -> None:
    tree = ast.parse(Path(marketdata.sim.model.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"grpc", "asyncio", "time", "redis", "fastapi", "socket", "threading"}, imported


def test_same_seed_same_events() -> None:
    a, b = model(3), model(3)
    for name in IDS:
        assert a.snapshot(name, TS) == b.snapshot(name, TS)
        assert a.generate(name, 1000, TS) == b.generate(name, 1000, TS)
    c = model(4)
    assert [c.generate(name, 200, TS) for name in IDS] != [a.generate(name, 200, TS) for name in IDS]


def test_the_epoch_is_handed_in_carried_everywhere_and_changes_nothing_else() -> None:
    """`marketdata sim --seed` stays deterministic: two runs differ only in their epoch."""
    a = Model(DEFAULT_INSTRUMENTS, random.Random(3), epoch=1_111)
    b = Model(DEFAULT_INSTRUMENTS, random.Random(3), epoch=2_222)
    assert (a.epoch, b.epoch, model(3).epoch) == (1_111, 2_222, 0)
    for name in IDS:
        snap = a.snapshot(name, TS)
        assert snap.epoch == 1_111 and dataclasses.replace(snap, epoch=2_222) == b.snapshot(name, TS)
        events = a.generate(name, 300, TS)
        assert events.epoch == 1_111 and {e.epoch for e in events} == {1_111}
        assert dataclasses.replace(events, epoch=2_222) == b.generate(name, 300, TS)
        assert a.book(name).epoch == 1_111 and a.book(name).seq == 300
    # A consumer of both streams sees the second as a reset of the first, book for book.
    books = Books(IDS)
    for m in (a, b):
        for msg in wire([m.snapshot(name, TS) for name in IDS]):
            books.apply(msg)
        for name in IDS:
            for msg in wire(m.generate(name, 50, TS)):
                books.apply(msg)
            assert (books.books[name].epoch, books.books[name].seq) == (m.epoch, 350)
            assert books.books[name].checksum() == m.book(name).checksum()


def test_stream_does_not_depend_on_how_it_is_split_or_on_other_instruments() -> None:
    whole = model(5)
    split = Model([DEFAULT_INSTRUMENTS[3]], random.Random(5))
    name = IDS[3]
    expected = list(whole.generate(name, 1000, TS, checksum=False))
    got: list[Event] = []
    rng = random.Random(0)
    while len(got) < 1000:
        got += split.generate(name, min(1000 - len(got), rng.randint(1, 37)), TS, checksum=False)
    assert got == expected


@pytest.mark.parametrize("name", IDS)
def test_book_stays_sane_for_thousands_of_events(name: str) -> None:
    cfg = ModelConfig()
    m = model(11, cfg)
    book = m.book(name)
    seq = book.seq
    kinds: Counter[str] = Counter()
    for _ in range(3000):
        (event,) = m.generate(name, 1, TS, checksum=False)
        assert event.instrument == name and event.ts == TS
        assert event.seq == seq + 1, "seq must be contiguous"
        seq = event.seq
        assert book.seq == seq
        assert not book.is_crossed(), f"crossed or locked after seq {seq}: {book.top()}"
        assert cfg.min_depth <= book.depth(BID) <= cfg.max_depth, (seq, book.depth(BID))
        assert cfg.min_depth <= book.depth(ASK) <= cfg.max_depth, (seq, book.depth(ASK))
        kinds[type(event.body).__name__] += 1
    # A lively market: every kind of activity happens.
    assert kinds["Trade"] > 100 and kinds["Update"] > 1500, kinds
    buys, sells = m.trades_count(name)
    assert buys > 10 and sells > 10


def test_depth_bounds_hold_with_a_narrow_range() -> None:
    cfg = ModelConfig(min_depth=5, max_depth=12, initial_depth=8)
    m = model(2, cfg)
    for name in IDS:
        book = m.book(name)
        for _ in range(800):
            m.generate(name, 1, TS, checksum=False)
            assert 5 <= book.depth(BID) <= 12 and 5 <= book.depth(ASK) <= 12
            assert not book.is_crossed()


@pytest.mark.parametrize("name", IDS)
def test_trades_match_the_level_changes_that_follow(name: str) -> None:
    m = model(13)
    book = m.book(name)
    trades: list[Trade] = []
    before: dict[int, int] = {}
    checked = 0
    for _ in range(3000):
        (event,) = m.generate(name, 1, TS, checksum=False)
        body = event.body
        if isinstance(body, Trade):
            if not trades:  # a trade leaves the book as it was: this is the book the order walked
                opp = ASK if body.aggressor == BID else BID
                before = dict(book.bids() if opp == BID else book.asks())
            trades.append(body)
            continue
        assert isinstance(body, Update)
        if trades:
            aggressor = trades[0].aggressor
            assert all(t.aggressor == aggressor for t in trades)
            opp = ASK if aggressor == BID else BID
            taken: Counter[int] = Counter()
            for t in trades:
                assert t.size > 0
                taken[t.price] += t.size
            opp_changes = {p: s for side, p, s in body.changes if side == opp}
            assert set(opp_changes) == set(taken), "the update must touch exactly the traded levels"
            for price, size in taken.items():
                assert before[price] - size == opp_changes[price]
            # Buys walk up the asks from the best, sells down the bids.
            prices = [t.price for t in trades]
            assert prices == sorted(prices, reverse=aggressor == ASK)
            assert prices[0] == (min if aggressor == BID else max)(before)
            checked += 1
            trades = []
    assert checked > 20


def test_rebuilt_book_matches_every_checksum() -> None:
    m = model(17)
    books = Books(IDS)
    for msg in wire([m.snapshot(name, TS) for name in IDS]):
        books.apply(msg)
    rng = random.Random(1)
    for _ in range(30):
        for name in IDS:
            events = m.generate(name, rng.randint(1, 80), TS)
            msgs = wire(events)
            assert [e.seq for e in msgs] == list(range(events.first_seq, events.last_seq + 1))
            assert msgs[-1].checksum == events.checksum and not any(e.HasField("checksum") for e in msgs[:-1])
            for msg in msgs:
                books.apply(msg)  # raises on a gap or a checksum mismatch
            assert books.books[name].bids() == m.book(name).bids()
            assert books.books[name].asks() == m.book(name).asks()


def test_checksum_after_every_event_matches_a_rebuilt_book() -> None:
    m = model(19)
    name = IDS[0]
    books = Books([name])
    books.apply(wire([m.snapshot(name, TS)])[0])
    for _ in range(800):
        events = m.generate(name, 1, TS)  # checksum on its only event, trades included
        assert events.checksum == m.book(name).checksum()
        (msg,) = wire(events)
        books.apply(msg)


def test_snapshot_is_the_whole_book_best_first() -> None:
    m = model(23)
    name = IDS[5]
    m.generate(name, 500, TS)
    snap = m.snapshot(name, TS + 1)
    assert isinstance(snap.body, Snapshot)
    book = m.book(name)
    assert snap.seq == book.seq == 500 and snap.ts == TS + 1
    assert list(snap.body.bids) == book.bids() and list(snap.body.asks) == book.asks()
    assert [p for p, _ in snap.body.bids] == sorted((p for p, _ in snap.body.bids), reverse=True)
    assert [p for p, _ in snap.body.asks] == sorted(p for p, _ in snap.body.asks)
    assert snap.checksum == book.checksum()


def test_prices_and_sizes_are_positive_integers() -> None:
    m = model(29)
    for name in IDS:
        for event in m.generate(name, 1000, TS, checksum=False):
            body = event.body
            if isinstance(body, Trade):
                assert isinstance(body.price, int) and body.price > 0 and body.size > 0
            else:
                assert isinstance(body, Update) and body.changes
                for side, price, size in body.changes:
                    assert side in (BID, ASK) and isinstance(price, int) and price > 0 and size >= 0


def test_unknown_instrument_and_bad_config() -> None:
    m = model()
    with pytest.raises(UnknownInstrument):
        m.generate("NOPE", 1, TS)
    with pytest.raises(ValueError):
        ModelConfig(min_depth=10, max_depth=5, initial_depth=7)


def test_generated_instruments_make_sane_verifiable_books() -> None:
    """Every kind and price level of a generated universe: books stay uncrossed, bounded, traded and rebuildable."""
    listed = universe(160, 5)[8:]
    assert {inst.kind for inst in listed} == {"crypto", "equity", "fx", "future"}
    cfg = ModelConfig()
    m = Model(listed, random.Random(5), cfg)
    ids = [inst.id for inst in listed]
    books = Books(ids)
    for msg in wire([m.snapshot(name, TS) for name in ids]):
        books.apply(msg)
    for inst in listed:
        name = inst.id
        book = m.book(name)
        trades = 0
        for _ in range(6):
            events = m.generate(name, 50, TS)
            trades += sum(isinstance(ev.body, Trade) for ev in events)
            for msg in wire(events):
                books.apply(msg)  # raises on a gap or a checksum mismatch
            assert not book.is_crossed(), f"{name}: crossed or locked at seq {book.seq}: {book.top()}"
            assert cfg.min_depth <= book.depth(BID) <= cfg.max_depth and cfg.min_depth <= book.depth(ASK) <= cfg.max_depth
        assert trades > 0, f"{name} ({inst.kind} at {inst.reference_price}) never traded in 300 events"
        (bid, _), (ask, _) = book.level_at(BID, 0), book.level_at(ASK, 0)
        ref = inst.reference_ticks
        assert 0.5 * ref <= bid < ask <= 1.5 * ref, f"{name}: touch {bid}/{ask} strayed from {ref}"


def test_a_thousand_instruments_each_get_their_own_book() -> None:
    listed = universe(1000, 1)
    m = Model(listed, random.Random(1))
    assert all(m.book(inst.id).depth(BID) == ModelConfig().initial_depth for inst in listed)
    assert m.snapshot(listed[-1].id, TS).seq == 0
    assert len({m.book(inst.id).checksum() for inst in listed}) == 1000


def test_the_named_eight_make_the_same_market_in_any_universe() -> None:
    small = Model(DEFAULT_INSTRUMENTS, random.Random(9))
    large = Model(universe(300, 9), random.Random(9))
    for name in IDS:
        assert large.snapshot(name, TS) == small.snapshot(name, TS)
        assert large.generate(name, 300, TS) == small.generate(name, 300, TS)
