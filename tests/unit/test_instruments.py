"""Instrument reference data: integer/decimal conversions, select() and universe()."""

from __future__ import annotations

import re
from decimal import Decimal
from statistics import median

import pytest

from marketdata.errors import MarketDataError, UnknownInstrument
from marketdata.instruments import DEFAULT_INSTRUMENTS, MAX_UNIVERSE, Instrument, select, universe

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


# -- universe ----------------------------------------------------------------------------

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")  # what the simulator accepts in a request
CURRENCY = r"(EUR|GBP|AUD|NZD|USD|CAD|CHF|SGD|HKD|CNH|NOK|SEK|DKK|PLN|CZK|HUF|TRY|ZAR|MXN|BRL|ILS|INR|THB|KRW|JPY)"
ID_OF_KIND = {
    "crypto": re.compile(r"[A-Z]{3,4}-(USD|EUR|USDT)"),
    "equity": re.compile(r"[A-Z]{3,4}"),
    "fx": re.compile(rf"{CURRENCY}-{CURRENCY}"),
    "future": re.compile(r"[A-Z0-9]{2,4}[FGHJKMNQUVXZ]2[678]"),
}
U1000 = universe(1000, 1)


@pytest.mark.parametrize("seed", [1, 2, 12345])
def test_a_universe_of_eight_is_the_named_list(seed: int) -> None:
    assert universe(8, seed) == DEFAULT_INSTRUMENTS
    assert universe(3, seed) == DEFAULT_INSTRUMENTS[:3]
    assert all(inst.activity == 1.0 for inst in DEFAULT_INSTRUMENTS)


def test_the_universe_is_a_function_of_its_size_and_seed() -> None:
    assert universe(1000, 1) == U1000
    other = universe(1000, 2)
    assert other[:8] == U1000[:8], "every seed starts with the named eight"
    assert [i.id for i in other] != [i.id for i in U1000]
    # a smaller universe is the start of a larger one (only the activity weights rescale)
    assert [i.id for i in universe(300, 1)] == [i.id for i in U1000[:300]]


@pytest.mark.parametrize("n", [0, -1, MAX_UNIVERSE + 1])
def test_a_universe_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match=f"1 to {MAX_UNIVERSE} instruments, not {n}"):
        universe(n, 1)


def test_ids_are_unique_and_well_formed_up_to_the_largest_universe() -> None:
    largest = universe(MAX_UNIVERSE, 7)
    ids = [inst.id for inst in largest]
    assert len(ids) == len(set(ids)) == MAX_UNIVERSE
    assert all(ID.fullmatch(i) for i in ids)
    assert {inst.kind for inst in largest} == {"crypto", "equity", "fx", "future"}


def test_generated_instruments_look_like_their_kind() -> None:
    generated = U1000[8:]
    kinds = {kind: [i for i in generated if i.kind == kind] for kind in ID_OF_KIND}
    # about 35/40/10/15 shares
    assert 250 < len(kinds["crypto"]) < 450 and 300 < len(kinds["equity"]) < 500, {k: len(v) for k, v in kinds.items()}
    assert 50 < len(kinds["fx"]) < 150 and 100 < len(kinds["future"]) < 200, {k: len(v) for k, v in kinds.items()}
    for kind, members in kinds.items():
        for inst in members:
            assert ID_OF_KIND[kind].fullmatch(inst.id), f"{inst.id} does not look like a {kind}"
            assert inst.description and inst.id not in inst.description
    for inst in kinds["fx"]:
        base, quote = inst.id.split("-")
        assert base != quote and inst.description.endswith(" spot") and inst.lot_size == "1000"
    for inst in kinds["equity"]:
        assert (inst.tick_size, inst.lot_size) == ("0.01", "1") and inst.description.endswith("common stock")
    for inst in kinds["future"]:
        assert inst.lot_size == "1" and re.search(r"future, [A-Z][a-z]+ 20(26|27|28)$", inst.description), inst


def test_tick_lot_and_decimals_fit_each_other_and_the_price() -> None:
    for inst in U1000[8:]:
        # the printed decimals show a tick and a lot exactly, and no more digits than those need
        assert Decimal(inst.tick_size) == Decimal(inst.tick_units).scaleb(-inst.price_decimals), inst
        assert Decimal(inst.lot_size) == Decimal(inst.lot_units).scaleb(-inst.size_decimals), inst
        assert inst.tick_units % 10 or inst.price_decimals == 0, f"{inst.id}: a decimal too many for tick {inst.tick_size}"
        assert inst.lot_units % 10 or inst.size_decimals == 0, f"{inst.id}: a decimal too many for lot {inst.lot_size}"
        # the reference price is on the tick grid and a book has room below it
        ref = Decimal(inst.reference_price)
        assert inst.ticks(ref) == inst.reference_ticks >= 300, inst
        # a tick is a small step of the price: between 1 in 100 and 1 in 10 million
        assert 1e-7 <= float(Decimal(inst.tick_size) / ref) <= 1e-2, f"{inst.id}: tick {inst.tick_size} at {ref}"
        if inst.kind == "crypto":  # a lot is worth about a dollar to ten
            assert 1 <= float(ref * Decimal(inst.lot_size)) <= 10, f"{inst.id}: lot {inst.lot_size} at {ref}"


def test_reference_prices_vary() -> None:
    prices = [Decimal(i.reference_price) for i in U1000[8:]]
    assert len(set(prices)) > 0.95 * len(prices)
    assert min(prices) < 1 and max(prices) > 1000


@pytest.mark.parametrize("n", [9, 200, 1000, 3000])
def test_activity_is_skewed_and_keeps_the_total_rate(n: int) -> None:
    listed = U1000 if n == 1000 else universe(n, 3)
    weights = [inst.activity for inst in listed]
    assert weights[:8] == [1.0] * 8, "the named eight keep --rate"
    assert sum(weights) == pytest.approx(n), "the whole universe makes --rate x n events/s"
    if n < 100:
        return
    ranked = sorted(weights[8:], reverse=True)
    top = ranked[: len(ranked) // 20]
    assert sum(top) > 0.4 * sum(ranked), "the busiest 5% carry a large share of the events"
    assert median(ranked) < 0.5, "most instruments are quiet"
    assert min(ranked) > 0


def test_activity_ranks_depend_on_the_seed() -> None:
    busiest = {seed: max(universe(500, seed)[8:], key=lambda i: i.activity).id for seed in (1, 2, 3)}
    assert len(set(busiest.values())) == 3, busiest


def test_select_from_a_universe() -> None:
    ids = [U1000[500].id, "BTC-USD"]
    assert [i.id for i in select(ids, U1000)] == ids
    with pytest.raises(UnknownInstrument):
        select([U1000[500].id])  # not among the named eight
