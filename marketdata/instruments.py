"""Instrument reference data and the integer/decimal conversions at the edges.

Inside, a price is a number of ticks and a size a number of lots. A decimal value
is made only for people and JSON, by one exact integer product and one division,
which Python rounds correctly, so the printed number is the decimal one.

`universe(n, seed)` lists a market of `n` instruments: the eight named ones, then
generated ones of the same four kinds, a pure function of (n, seed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from math import floor, log10

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
    # The simulator's event rate for it, as a multiple of --rate; reference data, not a contract.
    activity: float = 1.0
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


# -- a universe: the eight above, then generated instruments of the same kinds --------------

MAX_UNIVERSE = 10_000
"""The largest universe `universe` makes (`marketdata sim --universe`)."""

_KINDS = ("crypto", "equity", "fx", "future")
_KIND_WEIGHTS = (35, 40, 10, 15)  # shares of the generated instruments, while a kind has ids left

_SYLLABLES = tuple(
    "ba be bi bo da de di do fa fe fi ga go ka ke ki ko la le li lo lu ma me mi mo na ne ni no "
    "pa pe po ra re ri ro sa se si so ta te ti to va ve vi vo xa za ze zo".split()
)
_CODAS = ("", "", "", "n", "r", "s", "x", "l", "k", "m")
_COMPANY = ("Inc.", "Corp.", "Holdings", "Group", "Technologies", "Systems", "Therapeutics", "Energy", "Bancorp", "Labs")
_CRYPTO_QUOTES = (("USD", "US dollar"), ("EUR", "Euro"), ("USDT", "Tether"))
_CRYPTO_QUOTE_WEIGHTS = (75, 15, 10)

# ISO 4217 codes in market-convention order (the earlier code of a pair is its base),
# with a rough value in US dollars; a generated pair's price is the ratio, jittered.
_CURRENCIES = (
    ("EUR", "Euro", 1.085), ("GBP", "British pound", 1.27), ("AUD", "Australian dollar", 0.66),
    ("NZD", "New Zealand dollar", 0.61), ("USD", "US dollar", 1.0), ("CAD", "Canadian dollar", 0.73),
    ("CHF", "Swiss franc", 1.12), ("SGD", "Singapore dollar", 0.74), ("HKD", "Hong Kong dollar", 0.128),
    ("CNH", "Chinese yuan (offshore)", 0.138), ("NOK", "Norwegian krone", 0.094), ("SEK", "Swedish krona", 0.095),
    ("DKK", "Danish krone", 0.145), ("PLN", "Polish zloty", 0.25), ("CZK", "Czech koruna", 0.043),
    ("HUF", "Hungarian forint", 0.0027), ("TRY", "Turkish lira", 0.031), ("ZAR", "South African rand", 0.054),
    ("MXN", "Mexican peso", 0.058), ("BRL", "Brazilian real", 0.18), ("ILS", "Israeli shekel", 0.27),
    ("INR", "Indian rupee", 0.012), ("THB", "Thai baht", 0.028), ("KRW", "South Korean won", 0.00073),
    ("JPY", "Japanese yen", 0.0066),
)  # fmt: skip

# Futures: root, underlying, reference price, tick, the month codes it lists.
_MONTH_CODES = "FGHJKMNQUVXZ"
_MONTH_NAMES = dict(zip(_MONTH_CODES, (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
), strict=True))  # fmt: skip
_FUTURES = (
    ("NQ", "E-mini Nasdaq-100", 19500, "0.25", "HMUZ"), ("YM", "E-mini Dow", 39000, "1", "HMUZ"),
    ("RTY", "E-mini Russell 2000", 2050, "0.1", "HMUZ"), ("FESX", "Euro Stoxx 50", 4900, "1", "HMUZ"),
    ("FDAX", "DAX", 18500, "1", "HMUZ"), ("ZN", "10-year US Treasury note", 110, "0.015625", "HMUZ"),
    ("ZB", "US Treasury bond", 118, "0.03125", "HMUZ"), ("6E", "Euro FX", 1.085, "0.00005", "HMUZ"),
    ("6J", "Japanese yen", 0.0066, "0.0000005", "HMUZ"), ("CL", "Crude oil (WTI)", 78, "0.01", _MONTH_CODES),
    ("NG", "Henry Hub natural gas", 2.5, "0.001", _MONTH_CODES), ("GC", "Gold", 2350, "0.1", "GJMQVZ"),
    ("SI", "Silver", 28, "0.005", "HKNUZ"), ("HG", "Copper", 4.5, "0.0005", "HKNUZ"),
    ("ZC", "Corn", 450, "0.25", "HKNUZ"), ("ZS", "Soybeans", 1150, "0.25", "FHKNQUX"),
    ("ZW", "Wheat", 600, "0.25", "HKNUZ"),
)  # fmt: skip
_FUTURE_YEARS = (2026, 2027, 2028)

_Spec = tuple[str, str, str, str, str, int, int, str]  # Instrument's fields up to reference_price


def universe(n: int, seed: int = 1) -> tuple[Instrument, ...]:
    """The first `n` instruments of the market that `seed` names: the eight named ones, then generated ones.

    Pure: the same (n, seed) gives the same instruments, and a smaller universe's ids
    are the first ones of a larger one's. Generated instruments are crypto pairs,
    equities, FX pairs and futures in about 35/40/10/15 shares, with tick, lot and
    decimals fitting their kind and price. Their `activity` follows Zipf's law (the
    k-th busiest has weight proportional to 1/k, ranks shuffled by the seed), scaled
    so the generated ones average 1: a few are busy, most are quiet, and the whole
    universe's event rate is n times the per-instrument rate; the named eight keep 1.
    """
    if not 1 <= n <= MAX_UNIVERSE:
        raise ValueError(f"a universe has 1 to {MAX_UNIVERSE} instruments, not {n}")
    named = len(DEFAULT_INSTRUMENTS)
    if n <= named:
        return DEFAULT_INSTRUMENTS[:n]
    specs = _generate(n - named, random.Random(f"universe:{seed}"))
    weights = _zipf(len(specs), random.Random(f"activity:{seed}:{n}"))
    return DEFAULT_INSTRUMENTS + tuple(Instrument(*spec, activity=w) for spec, w in zip(specs, weights, strict=True))


def _zipf(count: int, rng: random.Random) -> list[float]:
    """Weights 1/rank in a shuffled order, scaled to a mean of 1."""
    ranks = list(range(1, count + 1))
    rng.shuffle(ranks)
    scale = count / sum(1.0 / r for r in range(1, count + 1))
    return [scale / r for r in ranks]


def _generate(count: int, rng: random.Random) -> list[_Spec]:
    taken = {inst.id for inst in DEFAULT_INSTRUMENTS}
    fx = [(a, b) for i, a in enumerate(_CURRENCIES) for b in _CURRENCIES[i + 1 :]]
    futures = [(root, month, year) for root in _FUTURES for month in root[4] for year in _FUTURE_YEARS]
    rng.shuffle(fx)
    rng.shuffle(futures)
    weights = list(_KIND_WEIGHTS)
    specs: list[_Spec] = []
    while len(specs) < count:
        kind = rng.choices(_KINDS, weights)[0]
        spec: _Spec | None
        if kind == "crypto":
            spec = _crypto(rng)
        elif kind == "equity":
            spec = _equity(rng, taken)
        elif kind == "fx":
            spec = _fx(rng, *fx.pop())
        else:
            spec = _future(rng, *futures.pop())
        # the finite kinds leave the draw once every id of theirs is taken
        weights[2], weights[3] = (_KIND_WEIGHTS[2] if fx else 0), (_KIND_WEIGHTS[3] if futures else 0)
        if spec is not None and spec[0] not in taken:
            taken.add(spec[0])
            specs.append(spec)
    return specs


def _word(rng: random.Random, syllables: int) -> str:
    return ("".join(rng.choice(_SYLLABLES) for _ in range(syllables)) + rng.choice(_CODAS)).capitalize()


def _steps(price: float, tick_below: int, lot_notional: float) -> tuple[Decimal, Decimal]:
    """A tick about 10^-tick_below of `price` and a lot worth about `lot_notional`, both powers of ten."""
    magnitude = floor(log10(price))
    return Decimal(1).scaleb(magnitude - tick_below), Decimal(1).scaleb(floor(log10(lot_notional / price)))


def _spec(inst_id: str, kind: str, description: str, price: float, tick: Decimal, lot: Decimal) -> _Spec:
    """The fields of an instrument, its reference price put on the tick grid."""
    ticks = max(1, round(Decimal(price) / tick))
    decimals = max(0, -int(tick.as_tuple().exponent))
    size_decimals = max(0, -int(lot.as_tuple().exponent))
    ref = (ticks * tick).quantize(Decimal(1).scaleb(-decimals))
    return (inst_id, kind, description, format(tick, "f"), format(lot, "f"), decimals, size_decimals, format(ref, "f"))


def _crypto(rng: random.Random) -> _Spec:
    name = _word(rng, rng.choice((2, 2, 3)))
    base = name[: rng.choice((3, 4))].upper()
    quote, quote_name = rng.choices(_CRYPTO_QUOTES, _CRYPTO_QUOTE_WEIGHTS)[0]
    price = float(f"{10 ** rng.uniform(-3.0, 3.7):.4g}")  # 0.001 to 5,000
    tick, lot = _steps(price, 5, 10.0)
    return _spec(f"{base}-{quote}", "crypto", f"{name} / {quote_name}", price, tick, lot)


def _equity(rng: random.Random, taken: set[str]) -> _Spec | None:
    name = _word(rng, rng.choice((2, 3)))
    letters = name.upper()
    consonants = letters[0] + "".join(c for c in letters[1:] if c not in "AEIOU")
    for ticker in (letters[:4], letters[:3], consonants[:4], consonants[:3]):
        if len(ticker) >= 3 and ticker not in taken:
            break
    else:
        return None
    price = round(10 ** rng.uniform(0.5, 2.9), 2)  # 3 to 800 dollars
    return _spec(ticker, "equity", f"{name} {rng.choice(_COMPANY)} common stock", price, Decimal("0.01"), Decimal(1))


def _fx(rng: random.Random, base: tuple[str, str, float], quote: tuple[str, str, float]) -> _Spec:
    price = base[2] / quote[2] * rng.uniform(0.97, 1.03)
    tick, _ = _steps(price, 5, 1.0)
    return _spec(f"{base[0]}-{quote[0]}", "fx", f"{base[1]} / {quote[1]} spot", price, tick, Decimal(1000))


def _future(rng: random.Random, root: tuple[str, str, float, str, str], month: str, year: int) -> _Spec:
    code, underlying, price, tick, _ = root
    when = f"{_MONTH_NAMES[month]} {year}"
    price *= rng.uniform(0.94, 1.06)
    return _spec(f"{code}{month}{year % 100}", "future", f"{underlying} future, {when}", price, Decimal(tick), Decimal(1))
