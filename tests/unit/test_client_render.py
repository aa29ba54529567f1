"""The client's pure parts: the ladder as text, the quote figures, and the consumer's verified updates."""

from __future__ import annotations

import re

import grpc
import orjson
import pytest
from rich.console import Console

from marketdata.book import ASK, BID, checksum
from marketdata.client.ladder import (
    PANEL_CHROME,
    PANEL_WIDTH,
    BookView,
    fit_depth,
    mid_text,
    render_book,
    render_books,
    spread_bps,
)
from marketdata.client.terminal import (
    Consumer,
    Disagreement,
    NotListed,
    Rates,
    SimUnreachable,
    _rpc_error,
    choose,
)
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument
from marketdata.v1 import market_data_pb2 as pb

BY_ID = {i.id: i for i in DEFAULT_INSTRUMENTS}
BTC = BY_ID["BTC-USD"]  # tick 0.1, lot 0.0001
EUR = BY_ID["EUR-USD"]  # tick 0.00001, lot 1000
AAPL = BY_ID["AAPL"]  # tick 0.01, lot 1
ES = BY_ID["ES-DEC26"]  # tick 0.25


def text_of(renderable: object, width: int = 120) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.export_text()


# -- the ladder ----------------------------------------------------------------------------

BTC_VIEW = BookView(
    BTC,
    seq=42,
    bids=((650000, 12000), (649999, 5), (649990, 1)),  # 65000.0, 64999.9, 64999.0
    asks=((650001, 300), (650003, 7), (650010, 70000)),  # 65000.1, 65000.3, 65001.0
    verified=True,
    rate=1234.4,
)


def ladder_rows(text: str) -> list[tuple[str, str, str]]:
    """(bid size, price, ask size) of each level row, top to bottom, "" where a column is empty.

    Columns are right-aligned under their headings, so a value belongs to the heading it ends under.
    """
    lines = text.splitlines()
    head = next(i for i, ln in enumerate(lines) if "bid size" in ln)
    ends = [lines[head].index(word) + len(word) for word in ("bid size", "price", "ask size")]
    rows = []
    for line in lines[head + 1 :]:
        cells = ["", "", ""]
        for token in re.finditer(r"[\d.]+", line):
            if token.end() in ends:
                cells[ends.index(token.end())] = token.group()
        if cells[1]:
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_asks_above_bids_best_prices_nearest_the_spread() -> None:
    rows = ladder_rows(text_of(render_book(BTC_VIEW, depth=5)))
    asks = [r for r in rows if r[2]]
    bids = [r for r in rows if r[0]]
    assert rows == asks + bids, f"every ask row must come before every bid row: {rows}"
    # asks read down to the best (lowest) ask, bids read down from the best (highest) bid
    assert [p for _, p, _ in asks] == ["65001.0", "65000.3", "65000.1"]
    assert [p for _, p, _ in bids] == ["65000.0", "64999.9", "64999.0"]
    assert [s for _, _, s in asks] == ["7.0000", "0.0007", "0.0300"]
    assert [s for s, _, _ in bids] == ["1.2000", "0.0005", "0.0001"]


def test_a_line_separates_best_ask_from_best_bid() -> None:
    lines = text_of(render_book(BTC_VIEW, depth=3)).splitlines()
    best_ask = next(i for i, ln in enumerate(lines) if re.search(r"65000\.1 +0\.0300", ln))
    best_bid = next(i for i, ln in enumerate(lines) if re.search(r"1\.2000 +65000\.0", ln))
    assert best_bid == best_ask + 2 and "──" in lines[best_ask + 1]


def test_at_most_depth_levels_a_side_and_a_stable_height() -> None:
    shallow = text_of(render_book(BTC_VIEW, depth=2))
    rows = ladder_rows(shallow)
    assert [p for _, p, _ in rows] == ["65000.3", "65000.1", "65000.0", "64999.9"]
    # a side with fewer levels than the depth is padded, so frames do not jump
    one_sided = BookView(BTC, seq=1, bids=((650000, 1),), asks=(), verified=True)
    for depth in (1, 4):
        full = text_of(render_book(BTC_VIEW, depth)).splitlines()
        thin = text_of(render_book(one_sided, depth)).splitlines()
        assert len(full) == len(thin) == PANEL_CHROME + 2 * depth


def test_header_has_best_prices_spread_in_bps_mid_seq_and_rate() -> None:
    text = text_of(render_book(BTC_VIEW, depth=3))
    assert "bid 65000.0  ask 65000.1" in text
    # 0.1 / 65000.05 = 0.0154 bps; the mid falls on half a tick, so it gets one more decimal
    assert "spread 0.1 (0.02 bps)  mid 65000.05" in text
    assert "seq 42  1,234 events/s" in text
    assert "verified" in text and "NOT verified" not in text


def test_each_instrument_keeps_its_own_decimals() -> None:
    eur = BookView(EUR, seq=9, bids=((108512, 242),), asks=((108516, 502),), verified=True)
    text = text_of(render_book(eur, depth=1))
    assert "bid 1.08512  ask 1.08516" in text
    assert "spread 0.00004 (0.37 bps)  mid 1.08514" in text
    assert [r for r in ladder_rows(text)] == [("", "1.08516", "502000"), ("242000", "1.08512", "")]
    aapl = BookView(AAPL, seq=9, bids=((18997, 748),), asks=((19007, 167),), verified=True)
    text = text_of(render_book(aapl, depth=1))
    assert "spread 0.10 (5.26 bps)  mid 190.02" in text
    assert ladder_rows(text) == [("", "190.07", "167"), ("748", "189.97", "")]


@pytest.mark.parametrize(
    ("view", "state"),
    [
        (BookView(BTC, seq=None), "waiting for snapshot"),
        (BookView(BTC, seq=5, bids=((1, 1),), asks=((2, 1),), verified=False), "NOT verified"),
        (BTC_VIEW, "verified"),
    ],
)
def test_the_verified_state_is_shown(view: BookView, state: str) -> None:
    last = [ln for ln in text_of(render_book(view, depth=2)).splitlines() if ln.strip()][-1]
    assert state in last


def test_empty_book_shows_dashes_not_numbers() -> None:
    text = text_of(render_book(BookView(BTC, seq=None), depth=2))
    assert "bid -  ask -" in text and "spread -  mid -" in text and "seq -" in text


def test_several_instruments_side_by_side_when_wide_stacked_when_narrow() -> None:
    views = [BTC_VIEW, BookView(EUR, seq=None), BookView(AAPL, seq=None)]
    wide = text_of(render_books(views, 2), width=3 * (PANEL_WIDTH + 1))
    first = wide.splitlines()[0]
    assert "BTC-USD" in first and "EUR-USD" in first and "AAPL" in first
    narrow = text_of(render_books(views, 2), width=PANEL_WIDTH + 2).splitlines()
    titles = [i for i, ln in enumerate(narrow) if re.search(r"BTC-USD|EUR-USD|AAPL", ln)]
    assert len(titles) == 3 and titles[1] - titles[0] == PANEL_CHROME + 4


def test_fit_depth() -> None:
    # 3 ladders a row on 140 columns; 8 ladders make 3 rows; 40 lines give each 13 lines
    assert fit_depth(8, 140, 40, 10) == (40 // 3 - PANEL_CHROME) // 2
    assert fit_depth(1, 200, 100, 10) == 10  # never more than asked
    assert fit_depth(8, 40, 10, 10) == 1  # never less than one level


# -- quote figures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inst", "bid", "ask", "mid"),
    [
        (BTC, 650000, 650001, "65000.05"),
        (BTC, 650000, 650002, "65000.1"),
        (AAPL, 18997, 19007, "190.02"),
        (ES, 22398, 22399, "5599.625"),  # ticks of 0.25: half a tick needs a third decimal
        (EUR, 1, 2, "0.000015"),
    ],
)
def test_mid_text_is_exact(inst: Instrument, bid: int, ask: int, mid: str) -> None:
    assert mid_text(inst, bid, ask) == mid


def test_spread_bps() -> None:
    assert spread_bps(99, 101) == pytest.approx(200.0)
    assert spread_bps(650000, 650001) == pytest.approx(0.1 / 65000.05 * 1e4)


# -- the consumer: what --json prints ------------------------------------------------------


def snap(name: str, seq: int, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> pb.Event:
    ev = pb.Event(instrument=name, seq=seq, ts=1_000 + seq, checksum=checksum(bids, asks))
    ev.snapshot.bids.extend(pb.Level(side=pb.SIDE_BID, price=p, size=s) for p, s in bids)
    ev.snapshot.asks.extend(pb.Level(side=pb.SIDE_ASK, price=p, size=s) for p, s in asks)
    return ev


def upd(name: str, seq: int, changes: list[tuple[int, int, int]], crc: int | None = None) -> pb.Event:
    ev = pb.Event(instrument=name, seq=seq, ts=1_000 + seq)
    ev.update.changes.extend(pb.Level(side=sd, price=p, size=s) for sd, p, s in changes)
    if crc is not None:
        ev.checksum = crc
    return ev


def test_one_update_per_changed_instrument_per_batch_with_decimals() -> None:
    consumer = Consumer([BTC, EUR])
    bids, asks = [(650000, 12000)], [(650001, 300)]
    updates = consumer.apply([snap("BTC-USD", 10, bids, asks)])
    assert list(updates) == ["BTC-USD"]  # EUR-USD had no event: no update
    after = checksum([(650000, 12000), (649999, 5)], [(650001, 300)])
    batch = [upd("BTC-USD", 11, [(BID, 649999, 5)]), upd("BTC-USD", 12, [(ASK, 650002, 0)], crc=after)]
    updates = consumer.apply(batch)
    assert list(updates) == ["BTC-USD"]  # two events, one update
    line = consumer.line("BTC-USD", updates["BTC-USD"])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == {
        "instrument": "BTC-USD",
        "epoch": 0,
        "seq": 12,
        "ts": 1_012,
        "bid": 65000.0,
        "bid_size": 1.2,
        "ask": 65000.1,
        "ask_size": 0.03,
        "spread": 0.1,
        "spread_bps": round(0.1 / 65000.05 * 1e4, 4),
        "mid": 65000.05,
        "checksum": after,
        "verified": True,
    }


def test_an_update_without_a_checksum_is_not_verified() -> None:
    consumer = Consumer([BTC])
    consumer.apply([snap("BTC-USD", 1, [(10, 1)], [(12, 1)])])
    updates = consumer.apply([upd("BTC-USD", 2, [(BID, 11, 1)])])
    record = orjson.loads(consumer.line("BTC-USD", updates["BTC-USD"]))
    assert record["verified"] is False
    assert record["checksum"] == checksum([(11, 1), (10, 1)], [(12, 1)])  # ours, since none came
    assert consumer.view("BTC-USD", 5, None).verified is False


def test_events_before_the_snapshot_make_no_update() -> None:
    consumer = Consumer([BTC])
    assert consumer.apply([upd("BTC-USD", 7, [(BID, 11, 1)])]) == {}
    assert consumer.view("BTC-USD", 5, None).seq is None


@pytest.mark.parametrize(
    ("event", "says"),
    [
        (upd("BTC-USD", 3, [(BID, 11, 1)]), "sequence gap, expected seq 2, got 3"),
        (upd("BTC-USD", 2, [(BID, 11, 1)], crc=123), "checksum mismatch at seq 2"),
        (upd("ETH-USD", 1, [(BID, 11, 1)]), "did not subscribe"),
    ],
)
def test_a_disagreement_with_the_exchange_is_one_clear_error(event: pb.Event, says: str) -> None:
    consumer = Consumer([BTC])
    consumer.apply([snap("BTC-USD", 1, [(10, 1)], [(12, 1)])])
    with pytest.raises(Disagreement, match=says) as info:
        consumer.apply([event])
    assert "\n" not in str(info.value)


def test_view_takes_the_best_levels_at_a_batch_boundary() -> None:
    consumer = Consumer([BTC])
    consumer.apply([snap("BTC-USD", 4, [(10, 1), (9, 2), (8, 3)], [(12, 1), (13, 2)])])
    view = consumer.view("BTC-USD", 2, 5.0)
    assert view == BookView(BTC, 4, ((10, 1), (9, 2)), ((12, 1), (13, 2)), True, 5.0)


def test_rates_count_events_by_seq() -> None:
    rates = Rates()
    assert rates.observe("A", 100, now=10.0) is None
    assert rates.observe("A", 150, now=10.5) is None  # less than a window
    assert rates.observe("A", 300, now=11.0) == pytest.approx(200.0)
    assert rates.observe("A", 10, now=11.5) == pytest.approx(200.0)  # seq went back: window restarts


# -- connecting ----------------------------------------------------------------------------


def listing() -> list[pb.Instrument]:
    return [
        pb.Instrument(id=i.id, kind=i.kind, description=i.description, tick_size=i.tick_size, lot_size=i.lot_size,
                      price_decimals=i.price_decimals, size_decimals=i.size_decimals)
        for i in DEFAULT_INSTRUMENTS[:3]
    ]  # fmt: skip


def test_choose_keeps_the_order_asked_and_names_what_is_missing() -> None:
    assert [i.id for i in choose(listing(), (), "h:1")] == ["BTC-USD", "ETH-USD", "SOL-USD"]
    assert [i.id for i in choose(listing(), ("SOL-USD", "BTC-USD"), "h:1")] == ["SOL-USD", "BTC-USD"]
    with pytest.raises(NotListed) as info:
        choose(listing(), ("BTC-USD", "NOPE"), "h:1")
    assert str(info.value) == "unknown instrument 'NOPE': the simulator at h:1 lists BTC-USD, ETH-USD, SOL-USD"


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_failed_calls_become_one_line_a_user_can_act_on() -> None:
    refused = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"
    err = _rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, refused), "127.0.0.1:1", connected=False)
    assert isinstance(err, SimUnreachable)
    assert str(err) == "cannot reach simulator at 127.0.0.1:1 (connection refused); is `marketdata sim` running?"
    err = _rpc_error(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "h:2", connected=False)
    assert "cannot reach simulator at h:2 (no answer within" in str(err)
    err = _rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "h:3", connected=True)
    assert str(err) == "lost the simulator at h:3 (connection closed)"
    err = _rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, "unknown instrument 'X'"), "h:4", connected=True)
    assert "unknown instrument 'X'" in str(err)
