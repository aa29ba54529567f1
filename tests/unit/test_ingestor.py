"""The ingestor's pure parts (marketdata.ingest.ingestor); its loops run against real gRPC and Redis in
tests/integration/test_ingest.py."""

from __future__ import annotations

import pytest

from marketdata import schema
from marketdata.errors import UnknownInstrument
from marketdata.ingest.ingestor import select_instruments
from marketdata.instruments import DEFAULT_INSTRUMENTS
from marketdata.v1 import market_data_pb2 as pb

BTC = DEFAULT_INSTRUMENTS[0]


def test_select_instruments_keeps_the_requested_order_and_names_an_unknown_one() -> None:
    listed = [pb.Instrument(id=i.id, kind=i.kind, description=i.description, tick_size=i.tick_size, lot_size=i.lot_size,
                            price_decimals=i.price_decimals, size_decimals=i.size_decimals) for i in DEFAULT_INSTRUMENTS]
    assert [i.id for i in select_instruments(listed, ())] == [i.id for i in DEFAULT_INSTRUMENTS]
    chosen = select_instruments(listed, ("ETH-USD", "BTC-USD", "ETH-USD"))
    assert [i.id for i in chosen] == ["ETH-USD", "BTC-USD"]
    assert schema.instrument_json(chosen[1]) == schema.instrument_json(BTC)
    with pytest.raises(UnknownInstrument, match="'DOGE-USD'"):
        select_instruments(listed, ("BTC-USD", "DOGE-USD"))
