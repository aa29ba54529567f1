"""The terminal ladder (marketdata.client.ladder): the book as text, and the quote figures."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

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
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument

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
