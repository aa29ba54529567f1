"""What proves itself before the bridge forwards it: every reason a book is rejected, and the checksum of a decoded book."""

from __future__ import annotations

import random

import orjson
import pytest

from bridge.verify import (
    CHANNEL,
    CHECKSUM,
    MALFORMED,
    REASONS,
    Rejected,
    apply_delta,
    checked_book,
    verify_book,
    verify_delta,
    verify_trade,
)
from marketdata import schema
from marketdata.book import OrderBook
from marketdata.instruments import DEFAULT_INSTRUMENTS, Instrument
from tests.unit.bridge_fakes import BTC, ETH, snapshot, trade
from tests.unit.test_purity import FORBIDDEN, loaded_roots

# The README's example snapshot, as a reader in another language would check it.
README_BOOK = (
    b'{"v":1,"type":"book","instrument":"BTC-USD","seq":1042,"ts":1764050000123456,"pts":1764050000123789,'
    b'"epoch":1764049990000000,"bids":[[64999.9,0.5312],[64999.8,1.2]],"asks":[[65000.0,0.25],[65000.1,0.9]],'
    b'"checksum":4007694620}'
)


def rejected(payload: bytes, instrument: str = "BTC-USD") -> str:
    with pytest.raises(Rejected) as caught:
        verify_book(payload, instrument, next((i for i in DEFAULT_INSTRUMENTS if i.id == instrument), None))
    assert caught.value.reason in REASONS and caught.value.detail
    return caught.value.reason


def test_a_true_book_proves_itself_and_gives_its_place() -> None:
    assert verify_book(snapshot(42, epoch=7), "BTC-USD", BTC) == (7, 42)
    assert verify_book(README_BOOK, "BTC-USD", BTC) == (1764049990000000, 1042)


def test_each_reason() -> None:
    good = snapshot(3)
    assert rejected(snapshot(3, ETH)) == CHANNEL  # another instrument's book
    assert rejected(trade(3)) == CHANNEL  # a trade on a book channel
    assert rejected(good, "AAPL") == CHANNEL
    assert rejected(good, "DOGE-USD") == CHANNEL  # no longer listed: nothing to verify with
    assert rejected(snapshot(3, checksum=1)) == CHECKSUM
    tampered = good.replace(b'"bids":[[64999.9,', b'"bids":[[64999.8,', 1)
    assert tampered != good and rejected(tampered) == CHECKSUM
    for junk in (b"", b"hello", good[:-1], good[:-2] + b"\xff}", b'{"v":2' + good[6:],
                 good.replace(b'"seq":3', b'"seq":"3"'), good.replace(b'"bids":[[', b'"bids":[["x",'),
                 good.replace(b'"bids":[[', b'"bids":[[1,2,3],['), good.replace(b'"asks":[', b'"asks":{"a":1},"x":[')):
        assert rejected(junk) == MALFORMED, junk[:80]


def test_trades_prove_their_channel() -> None:
    assert verify_trade(trade(9, epoch=4), "BTC-USD") == (4, 9)
    for payload, reason in ((trade(9, inst=ETH), CHANNEL), (snapshot(9), CHANNEL), (b"{", MALFORMED)):
        with pytest.raises(Rejected) as caught:
            verify_trade(payload, "BTC-USD")
        assert caught.value.reason == reason


@pytest.mark.parametrize("inst", DEFAULT_INSTRUMENTS, ids=lambda i: i.id)
def test_the_checksum_of_a_decoded_book_is_the_books(inst: Instrument) -> None:
    """Decimals back to ticks and lots are exact for every instrument, at any depth, far from the reference price."""
    rng = random.Random(inst.id)
    for _ in range(200):
        book = OrderBook(inst.id)
        mid = inst.reference_ticks * rng.choice((1, 7, 1000))
        bids = [(mid - 1 - i * rng.randint(1, 3), rng.randint(1, 10**7)) for i in range(rng.randint(0, 30))]
        asks = [(mid + 1 + i * rng.randint(1, 3), rng.randint(1, 10**7)) for i in range(rng.randint(0, 30))]
        book.reset(1, bids, asks)
        msg = orjson.loads(schema.encode_book(inst, book, 25, 1, 1, book.checksum()))
        assert schema.book_checksum(msg, inst) == book.checksum()


def test_verify_is_pure() -> None:
    bad = sorted(loaded_roots("bridge.verify") & set(FORBIDDEN))
    assert not bad, f"bridge.verify loads {', '.join(bad)}: the check must stay free of I/O"


# The README's example delta, which applies to the example snapshot above.
README_DELTA = (
    b'{"v":1,"type":"delta","instrument":"BTC-USD","epoch":1764049990000000,"seq":1043,"prev_seq":1042,'
    b'"ts":1764050000123990,"pts":1764050000124101,"bids":[[64999.9,0.0],[64999.7,0.8]],"asks":[[65000.0,0.1]],'
    b'"checksum":1207910327}'
)


def test_the_readme_delta_applies_to_the_readme_book_and_a_forged_one_does_not() -> None:
    base = checked_book(README_BOOK, "BTC-USD", BTC)
    d = verify_delta(README_DELTA, "BTC-USD", BTC, base)
    assert d is not None and (d.epoch, d.seq, d.prev_seq) == (1764049990000000, 1043, 1042)
    after = apply_delta(base, d, BTC)
    assert [list(x) for x in after.bids] == [[64999.8, 1.2], [64999.7, 0.8]]
    assert [list(x) for x in after.asks] == [[65000.0, 0.1], [65000.1, 0.9]]
    assert verify_delta(README_DELTA.replace(b'"prev_seq":1042', b'"prev_seq":1041'), "BTC-USD", BTC, base) is None
    assert verify_delta(README_DELTA, "BTC-USD", BTC, None) is None
    for forged, reason in ((README_DELTA.replace(b"1207910327", b"1207910328"), CHECKSUM),
                           (README_DELTA.replace(b'"asks":[[', b'"asks":[["x",'), MALFORMED),
                           (README_DELTA.replace(b"BTC-USD", b"ETH-USD"), CHANNEL),
                           (README_BOOK, CHANNEL)):
        with pytest.raises(Rejected) as caught:
            verify_delta(forged, "BTC-USD", BTC, base)
        assert caught.value.reason == reason, forged
    with pytest.raises(Rejected):
        verify_delta(README_DELTA, "BTC-USD", None, base)
