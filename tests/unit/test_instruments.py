"""Instrument reference data: integer/decimal conversions and select()."""

from __future__ import annotations

from decimal import Decimal

import pytest

from marketdata.errors import MarketDataError, UnknownInstrument
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument, select

BY_ID = {i.id: i for i in DEFAULT_INSTRUMENTS}


def test_default_universe() -> None:
    assert [i.id for i in DEFAULT_INSTRUMENTS] == [
        "BTC-USD", "ETH-USD", "SOL-USD", "AAPL", "MSFT", "EUR-USD", "USD-JPY", "ES-DEC26",
    ]  # fmt: skip
    for inst in DEFAULT_INSTRUMENTS:
        # the printed decimals can show a tick and a lot
        assert inst.tick_units >= 1 and inst.lot_units >= 1
        assert Decimal(inst.tick_size) == Decimal(inst.tick_units).scaleb(-inst.price_decimals)
        assert Decimal(inst.lot_size) == Decimal(inst.lot_units).scaleb(-inst.size_decimals)
        assert inst.reference_ticks > 0


@pytest.mark.parametrize(
    ("inst_id", "tick_units", "lot_units", "ticks", "price", "price_text", "lots", "size", "size_text"),
    [
        ("BTC-USD", 1, 1, 650001, 65000.1, "65000.1", 5312, 0.5312, "0.5312"),
        ("BTC-USD", 1, 1, 650000, 65000.0, "65000.0", 1, 0.0001, "0.0001"),
        ("EUR-USD", 1, 1000, 108499, 1.08499, "1.08499", 3, 3000.0, "3000"),
        ("ES-DEC26", 25, 1, 22401, 5600.25, "5600.25", 2, 2.0, "2"),
        ("USD-JPY", 1, 1000, 151200, 151.2, "151.200", 1, 1000.0, "1000"),
        ("SOL-USD", 1, 1, 150001, 150.001, "150.001", 150, 1.5, "1.50"),
    ],
)
def test_conversions(
    inst_id: str, tick_units: int, lot_units: int, ticks: int, price: float, price_text: str, lots: int, size: float, size_text: str
) -> None:
    inst = BY_ID[inst_id]
    assert (inst.tick_units, inst.lot_units) == (tick_units, lot_units)
    assert inst.price(ticks) == price
    assert inst.price_text(ticks) == price_text
    assert inst.size(lots) == size
    assert inst.size_text(lots) == size_text
    assert inst.ticks(price_text) == ticks
    assert inst.ticks(Decimal(price_text)) == ticks


def test_reference_ticks() -> None:
    assert BY_ID["BTC-USD"].reference_ticks == 650000
    assert BY_ID["EUR-USD"].reference_ticks == 108500
    assert BY_ID["ES-DEC26"].reference_ticks == 22400


def test_ticks_off_the_grid() -> None:
    with pytest.raises(ValueError, match="not a multiple of tick 0.25"):
        BY_ID["ES-DEC26"].ticks("5600.1")


def test_bad_steps_are_refused() -> None:
    with pytest.raises(ValueError, match="not a positive multiple"):
        Instrument("X", "fx", "x", "0.001", "1", 2, 0)  # tick finer than the printed decimals
    with pytest.raises(ValueError, match="not a positive multiple"):
        Instrument("X", "fx", "x", "0", "1", 2, 0)


def test_select_keeps_order_and_drops_duplicates() -> None:
    chosen = select(["EUR-USD", "BTC-USD", "EUR-USD", "AAPL"])
    assert [i.id for i in chosen] == ["EUR-USD", "BTC-USD", "AAPL"]
    assert chosen[1] is BY_ID["BTC-USD"]


@pytest.mark.parametrize("ids", [None, [], ()])
def test_select_nothing_means_everything(ids: list[str] | None) -> None:
    assert select(ids) == DEFAULT_INSTRUMENTS


def test_select_unknown() -> None:
    with pytest.raises(UnknownInstrument, match="unknown instrument 'DOGE-USD'") as info:
        select(["BTC-USD", "DOGE-USD"])
    assert info.value.instrument == "DOGE-USD"
    assert isinstance(info.value, MarketDataError) and isinstance(info.value, LookupError)


def test_select_from_another_universe() -> None:
    mine = (Instrument("X", "fx", "x", "0.5", "1", 1, 0), Instrument("Y", "fx", "y", "1", "1", 0, 0))
    assert select(["Y"], mine) == (mine[1],)
    assert select(None, mine) == mine
    with pytest.raises(UnknownInstrument):
        select(["BTC-USD"], mine)
