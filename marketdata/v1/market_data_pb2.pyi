from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIDE_UNSPECIFIED: _ClassVar[Side]
    SIDE_BID: _ClassVar[Side]
    SIDE_ASK: _ClassVar[Side]
SIDE_UNSPECIFIED: Side
SIDE_BID: Side
SIDE_ASK: Side

class ListInstrumentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListInstrumentsResponse(_message.Message):
    __slots__ = ("instruments",)
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    instruments: _containers.RepeatedCompositeFieldContainer[Instrument]
    def __init__(self, instruments: _Iterable[Instrument | _Mapping] | None = ...) -> None: ...

class Instrument(_message.Message):
    __slots__ = ("description", "id", "kind", "lot_size", "price_decimals", "size_decimals", "tick_size")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TICK_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOT_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRICE_DECIMALS_FIELD_NUMBER: _ClassVar[int]
    SIZE_DECIMALS_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    description: str
    tick_size: str
    lot_size: str
    price_decimals: int
    size_decimals: int
    def __init__(self, id: str | None = ..., kind: str | None = ..., description: str | None = ..., tick_size: str | None = ..., lot_size: str | None = ..., price_decimals: int | None = ..., size_decimals: int | None = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ("instrument",)
    INSTRUMENT_FIELD_NUMBER: _ClassVar[int]
    instrument: str
    def __init__(self, instrument: str | None = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("instruments",)
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    instruments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, instruments: _Iterable[str] | None = ...) -> None: ...

class Level(_message.Message):
    __slots__ = ("price", "side", "size")
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    side: Side
    price: int
    size: int
    def __init__(self, side: Side | str | None = ..., price: int | None = ..., size: int | None = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("asks", "bids")
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    bids: _containers.RepeatedCompositeFieldContainer[Level]
    asks: _containers.RepeatedCompositeFieldContainer[Level]
    def __init__(self, bids: _Iterable[Level | _Mapping] | None = ..., asks: _Iterable[Level | _Mapping] | None = ...) -> None: ...

class Update(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[Level]
    def __init__(self, changes: _Iterable[Level | _Mapping] | None = ...) -> None: ...

class Trade(_message.Message):
    __slots__ = ("aggressor", "price", "size")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    AGGRESSOR_FIELD_NUMBER: _ClassVar[int]
    price: int
    size: int
    aggressor: Side
    def __init__(self, price: int | None = ..., size: int | None = ..., aggressor: Side | str | None = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("checksum", "epoch", "instrument", "seq", "snapshot", "trade", "ts", "update")
    INSTRUMENT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    TRADE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    instrument: str
    seq: int
    ts: int
    snapshot: Snapshot
    update: Update
    trade: Trade
    checksum: int
    epoch: int
    def __init__(self, instrument: str | None = ..., seq: int | None = ..., ts: int | None = ..., snapshot: Snapshot | _Mapping | None = ..., update: Update | _Mapping | None = ..., trade: Trade | _Mapping | None = ..., checksum: int | None = ..., epoch: int | None = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Iterable[Event | _Mapping] | None = ...) -> None: ...
