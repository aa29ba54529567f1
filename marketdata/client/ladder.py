"""The terminal ladder: one instrument's book as a rich renderable, and the quote figures.

Pure code: values in, renderables and numbers out; no console, no clock, no I/O.
The CLI client (marketdata.client.terminal) takes a `BookView` of each book at a batch
boundary and hands it here, so what is drawn is always a verified state.

A ladder reads top to bottom the way a trader reads one: asks above with the
best (lowest) ask just over the spread, bids below with the best (highest) bid
just under it, prices and sizes printed with the instrument's decimals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from marketdata.book import Level
from marketdata.instruments import Instrument

PANEL_WIDTH = 44
"""Characters one ladder takes across, border included; fixed so a layout never jitters."""

PANEL_CHROME = 8
"""Lines of one ladder that are not levels: borders, three header lines, column header, separators."""

ASK_STYLE = "red"
BID_STYLE = "green"


@dataclass(frozen=True, slots=True)
class BookView:
    """What the ladder shows of one book: its best levels at one seq, and how it was checked.

    `seq` is None while the book waits for its first snapshot. `verified` says the
    exchange's checksum matched this book at `seq`. `rate` is events/s, None until known.
    """

    instrument: Instrument
    seq: int | None
    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()
    verified: bool = False
    rate: float | None = None


# -- quote figures (the JSON lines use them too) ------------------------------------------


def _fixed(units: int, decimals: int) -> str:
    """An integer number of 10^-decimals units as exact decimal text."""
    sign = "-" if units < 0 else ""
    digits = str(abs(units)).rjust(decimals + 1, "0")
    if not decimals:
        return sign + digits
    return f"{sign}{digits[:-decimals]}.{digits[-decimals:]}"


def mid_text(inst: Instrument, bid: int, ask: int) -> str:
    """The exact mid of two prices in ticks: the instrument's decimals, one more when it falls on half a tick."""
    doubled = (bid + ask) * inst.tick_units  # twice the mid, in units of 10^-price_decimals
    if doubled % 2 == 0:
        return _fixed(doubled // 2, inst.price_decimals)
    return _fixed(doubled * 5, inst.price_decimals + 1)


def spread_bps(bid: int, ask: int) -> float:
    """The spread in basis points of the mid (the tick size cancels out)."""
    return (ask - bid) * 20_000 / (ask + bid)


# -- the ladder ----------------------------------------------------------------------------


def render_book(view: BookView, depth: int) -> Panel:
    """One instrument's ladder: `depth` ask rows above `depth` bid rows, blank-padded to a stable height."""
    inst = view.instrument
    price, size = inst.price_text, inst.size_text
    table = Table(box=box.HORIZONTALS, pad_edge=False, expand=True, show_edge=False)
    table.add_column("bid size", justify="right", style=BID_STYLE, ratio=1, no_wrap=True)
    table.add_column("price", justify="right", ratio=1, no_wrap=True)
    table.add_column("ask size", justify="right", style=ASK_STYLE, ratio=1, no_wrap=True)
    asks = view.asks[:depth]
    bids = view.bids[:depth]
    for _ in range(depth - len(asks)):
        table.add_row("", "", "")
    for p, s in reversed(asks):
        table.add_row("", Text(price(p), style=ASK_STYLE), size(s))
    table.add_section()  # the spread: a line between the best ask and the best bid
    for p, s in bids:
        table.add_row(size(s), Text(price(p), style=BID_STYLE), "")
    for _ in range(depth - len(bids)):
        table.add_row("", "", "")
    return Panel(
        Group(_header(view), table),
        title=f"[bold]{inst.id}[/]",
        title_align="left",
        subtitle=_state(view),
        subtitle_align="right",
        width=PANEL_WIDTH,
        box=box.ROUNDED,
    )


def _header(view: BookView) -> Text:
    inst = view.instrument
    bid = view.bids[0][0] if view.bids else None
    ask = view.asks[0][0] if view.asks else None
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("bid ")
    text.append(inst.price_text(bid) if bid is not None else "-", style=BID_STYLE)
    text.append("  ask ")
    text.append(inst.price_text(ask) if ask is not None else "-", style=ASK_STYLE)
    text.append("\n")
    if bid is not None and ask is not None:
        text.append(f"spread {inst.price_text(ask - bid)} ({spread_bps(bid, ask):.2f} bps)")
        text.append(f"  mid {mid_text(inst, bid, ask)}")
    else:
        text.append("spread -  mid -")
    text.append("\n")
    text.append(f"seq {view.seq if view.seq is not None else '-'}")
    text.append(f"  {view.rate:,.0f} events/s" if view.rate is not None else "  - events/s", style="dim")
    return text


def _state(view: BookView) -> str:
    if view.seq is None:
        return "[yellow]waiting for snapshot[/]"
    if view.verified:
        return "[green]verified[/]"
    return "[bold red]NOT verified[/]"


def render_books(views: Sequence[BookView], depth: int) -> RenderableType:
    """Every ladder, side by side as far as the width allows, then wrapping below."""
    if not views:
        return Text("no instruments")
    return Columns([render_book(v, depth) for v in views], equal=True)


def fit_depth(count: int, width: int, height: int, depth: int) -> int:
    """The most levels a side (at most `depth`, at least 1) that lets `count` ladders fit width x height."""
    per_row = max(1, width // (PANEL_WIDTH + 1))
    rows = math.ceil(count / per_row)
    fits = (height // max(1, rows) - PANEL_CHROME) // 2
    return max(1, min(depth, fits))
