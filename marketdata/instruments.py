"""Instrument reference data and the integer/decimal conversions at the edges.

Inside, a price is a number of ticks and a size a number of lots. A decimal value
is made only for people and JSON, by one exact integer product and one division,
which Python rounds correctly, so the printed number is the decimal one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from marketdata.errors import UnknownInstrument


def _units(step: str, decimals: int) -> int:
    scaled = Decimal(step).scaleb(decimals)
    if scaled != scaled.to_integral_value() or scaled <= 0:
        raise ValueError(f"step {step} is not a positive multiple of 1e-{decimals}")
    return int(scaled)


@dataclass(frozen=True, slots=True)
class Instrument:
    """One listed instrument: its id, its tick and lot, and how it is printed."""

    id: str
    kind: str
    description: str
    tick_size: str
    lot_size: str
    price_decimals: int
    size_decimals: int
    # Where the simulator starts its mid price; reference data, not a contract.
    reference_price: str = "100"
    tick_units: int = field(init=False, repr=False, compare=False)
    lot_units: int = field(init=False, repr=False, compare=False)
    price_scale: int = field(init=False, repr=False, compare=False)
    size_scale: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen dataclass: derived fields are set once, here.
        object.__setattr__(self, "tick_units", _units(self.tick_size, self.price_decimals))
        object.__setattr__(self, "lot_units", _units(self.lot_size, self.size_decimals))
        object.__setattr__(self, "price_scale", 10**self.price_decimals)
        object.__setattr__(self, "size_scale", 10**self.size_decimals)

    def price(self, ticks: int) -> float:
        """The decimal price of `ticks`, as the nearest float (prints as the decimal)."""
        return ticks * self.tick_units / self.price_scale

    def size(self, lots: int) -> float:
        """The decimal quantity of `lots`, as the nearest float."""
        return lots * self.lot_units / self.size_scale

    def price_text(self, ticks: int) -> str:
        return f"{self.price(ticks):.{self.price_decimals}f}"

    def size_text(self, lots: int) -> str:
        return f"{self.size(lots):.{self.size_decimals}f}"

    def ticks(self, price: str | Decimal) -> int:
        """The number of ticks of a decimal price; it must be on the tick grid."""
        n = Decimal(price) / Decimal(self.tick_size)
        if n != n.to_integral_value():
            raise ValueError(f"{self.id}: price {price} is not a multiple of tick {self.tick_size}")
        return int(n)

    @property
    def reference_ticks(self) -> int:
        return self.ticks(Decimal(self.reference_price).quantize(Decimal(self.tick_size)))


DEFAULT_INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("BTC-USD", "crypto", "Bitcoin / US dollar", "0.1", "0.0001", 1, 4, "65000"),
    Instrument("ETH-USD", "crypto", "Ether / US dollar", "0.01", "0.001", 2, 3, "3400"),
    Instrument("SOL-USD", "crypto", "Solana / US dollar", "0.001", "0.01", 3, 2, "150"),
    Instrument("AAPL", "equity", "Apple Inc. common stock", "0.01", "1", 2, 0, "190"),
    Instrument("MSFT", "equity", "Microsoft Corp. common stock", "0.01", "1", 2, 0, "420"),
    Instrument("EUR-USD", "fx", "Euro / US dollar spot", "0.00001", "1000", 5, 0, "1.085"),
    Instrument("USD-JPY", "fx", "US dollar / Japanese yen spot", "0.001", "1000", 3, 0, "151.2"),
    Instrument("ES-DEC26", "future", "E-mini S&P 500 future, December 2026", "0.25", "1", 2, 0, "5600"),
)


def select(ids: list[str] | tuple[str, ...] | None, universe: tuple[Instrument, ...] = DEFAULT_INSTRUMENTS) -> tuple[Instrument, ...]:
    """The instruments named by `ids` in the order given (all of `universe` when empty)."""
    if not ids:
        return universe
    by_id = {inst.id: inst for inst in universe}
    chosen: dict[str, Instrument] = {}
    for name in ids:
        if name not in by_id:
            raise UnknownInstrument(name)
        chosen.setdefault(name, by_id[name])
    return tuple(chosen.values())
