"""The instrument list as the bridge reads it: what it lists, when it is due, and a bad list ignored."""

from __future__ import annotations

import fakeredis
import pytest

from bridge.instrument_list import InstrumentList
from marketdata import schema
from marketdata.instruments import DEFAULT_INSTRUMENTS

KEY = "md:instruments"


@pytest.mark.asyncio
async def test_load_keeps_the_last_good_list() -> None:
    redis = fakeredis.FakeAsyncRedis()
    now = [100.0]
    listing = InstrumentList(redis, KEY, lambda: now[0])
    assert listing.due(10.0)
    await listing.load()  # nothing published yet
    assert listing.json == b"[]" and "BTC-USD" not in listing
    published = schema.encode_instruments(DEFAULT_INSTRUMENTS)
    await redis.set(KEY, published)
    await listing.load()
    assert "BTC-USD" in listing and listing.json == published
    assert not listing.due(10.0)
    now[0] += 10.0
    assert listing.due(10.0)
    for bad in (b"nope", None):
        if bad is None:
            await redis.delete(KEY)  # Redis restarted empty
        else:
            await redis.set(KEY, bad)
        await listing.load()
        assert "BTC-USD" in listing and listing.json == published
    await redis.aclose()
