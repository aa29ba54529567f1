"""The load generator's delta client (marketdata.loadtest.generator.DeltaClient), driven without a network."""

from __future__ import annotations

import orjson
import pytest

from marketdata import delta
from marketdata.loadtest.generator import DeltaClient, Tally
from tests.unit.test_fanout_deltas import BTC, published
from tests.unit.test_generator import Frame, Transport, frozen_clock  # noqa: F401 (fixture)

RESYNC = b'{"op":"resync","instruments":["BTC-USD"]}'


def client(verify: bool, protocol: str = "single") -> tuple[DeltaClient, Tally, Transport]:
    tally, transport = Tally(), Transport()
    c = DeltaClient(tally, "BTC-USD", protocol, False, delta.Replica(BTC) if verify else None)
    c.on_ws_connected(transport)  # type: ignore[arg-type]
    return c, tally, transport


@pytest.mark.parametrize("verify", [True, False])
def test_deltas_are_counted_chained_and_a_gap_asks_for_the_snapshot_again(verify: bool) -> None:
    books = published(8)
    c, t, tr = client(verify)
    feed = [books[0][0], books[1][1], books[2][1], books[4][1], books[5][1], books[5][0], books[6][1], books[7][1]]
    for payload in feed:  # delta 3 lost: 4 does not start at the book held; the snapshot 5 heals it
        c.on_ws_frame(tr, Frame(payload))  # type: ignore[arg-type]
    assert (t.books, t.deltas, t.gaps, t.resyncs, t.regressions, t.checksum_failures, t.errors) == (8, 6, 1, 1, 0, 0, 0)
    assert tr.sent == [RESYNC]
    assert t.bytes == sum(len(p) for p in feed)
    assert sum(t.hist_ts) == 8, "every delivery filed, deltas too"
    if verify:
        assert c.replica is not None and c.replica.seq == c.last and c.replica.valid


def test_a_delta_whose_result_fails_its_checksum_is_counted_and_resynced() -> None:
    books = published(4)
    c, t, tr = client(verify=True)
    d = orjson.loads(books[2][1])
    bad = books[2][1].replace(b'"checksum":%d' % d["checksum"], b'"checksum":%d' % (d["checksum"] ^ 1))
    for payload in (books[0][0], books[1][1], bad, books[3][1], books[2][0], books[3][1]):
        c.on_ws_frame(tr, Frame(payload))  # type: ignore[arg-type]
    assert (t.checksum_failures, t.resyncs, t.gaps) == (1, 1, 0)
    assert tr.sent == [RESYNC]
    assert c.replica is not None and c.replica.valid and c.last == orjson.loads(books[3][0])["seq"]


def test_a_multiplexed_delta_client_asks_for_deltas_in_its_subscribe() -> None:
    _, _, tr = client(verify=False, protocol="multi")
    assert orjson.loads(tr.sent[0]) == {"op": "subscribe", "instruments": ["BTC-USD"], "trades": False, "deltas": True}
