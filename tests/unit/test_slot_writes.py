"""A drain on Redis Cluster (marketdata.ingest.slot_writes): one fenced script per slot, nothing lost, nothing moved out of order.

The scripts' fence runs against a real cluster in tests/integration/test_ingest_cluster.py.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from marketdata import schema
from marketdata.ingest.lease import CLUSTER_FENCE
from marketdata.ingest.publish_queue import Drain, IngestStats, PublishQueue, tally
from marketdata.ingest.slot_writes import INSTRUMENTS_LUA, SLOT_LUA, slot_commands
from marketdata.instruments import Instrument, universe
from marketdata.settings import IngestSettings
from marketdata.sim.model import Model
from marketdata.slots import key_slot
from tests.unit.test_publish_queue import to_pb
from tests.unit.test_purity import loaded_roots

VALUE = b"12 ingest:here:1:abc"
INSTRUMENTS = universe(60)
KEYS = schema.Keys("md", cluster=True)


def busy_drain(coalesce: bool, instruments: tuple[Instrument, ...] = INSTRUMENTS) -> Drain:
    """A drain of many instruments with books, deltas and trades (several books each without coalescing)."""
    box = PublishQueue(instruments, IngestSettings(redis_cluster=True, coalesce=coalesce), IngestStats())
    m = Model(instruments, random.Random(5))
    box.apply([to_pb(m.snapshot(i.id, 1)) for i in instruments], pts=1)
    box.take(pts=1)  # the first books go out without deltas
    for round_ in range(3):
        for inst in instruments:
            box.apply([to_pb(e) for e in m.generate(inst.id, 40, ts=10 + round_)], pts=2)
    return box.take(pts=3)


def parse(command: tuple[bytes, ...]) -> tuple[bytes, list[bytes], list[bytes]]:
    """(script, KEYS, ARGV) of an EVAL."""
    assert command[0] == b"EVAL"
    n = int(command[2])
    return command[1], list(command[3 : 3 + n]), list(command[3 + n :])


def unpack(keys: list[bytes], argv: list[bytes]) -> tuple[list[tuple[bytes, bytes, bytes, bytes]], dict[bytes, list[bytes]]]:
    """What a slot script writes: (book key, snapshot, delta channel, delta) in order, and trades per list."""
    n, a = int(argv[1]), 3
    books = []
    for key in keys[1 : n + 1]:
        books.append((key, argv[a], argv[a + 1], argv[a + 2]))
        a += 3
    trades = {}
    for key in keys[n + 1 :]:
        count = int(argv[a])
        trades[key] = argv[a + 1 : a + 1 + count]
        a += count + 1
    assert a == len(argv), "every argument belongs to a book or a trade"
    return books, trades


def test_the_module_is_pure() -> None:
    assert not loaded_roots("marketdata.ingest.slot_writes") & {"redis", "asyncio", "grpc"}


def test_the_drain_uses_the_cluster_names() -> None:
    drain = busy_drain(coalesce=True)
    assert all(k.startswith(b"md:book:{") and k.endswith(b"}") for k, _ in drain.books)
    assert all(d is None or d[0].startswith(b"md:delta:{") for d in drain.deltas)
    assert all(k.startswith(b"md:trades:{") for k in drain.trades)


def test_each_script_writes_one_slot_fenced_by_that_slots_fence_key() -> None:
    drain = busy_drain(coalesce=False)
    commands = slot_commands(drain, "md", history=7, value=VALUE)
    assert len(commands) > 10, "60 instruments spread over many slots"
    seen_slots = []
    for command in commands:
        script, keys, argv = parse(command)
        assert script.startswith(CLUSTER_FENCE) and argv[0] == VALUE
        slots = {key_slot(k) for k in keys}
        assert len(slots) == 1, f"keys of several slots in one script: {keys}"
        (slot,) = slots
        assert keys[0] == KEYS.fence(slot).encode()
        if script is SLOT_LUA:
            books, _ = unpack(keys, argv)
            assert all(key_slot(channel) == slot for _, _, channel, delta in books if delta), "a delta channel of another slot"
            assert b"'PUBLISH'" not in script and b"'SPUBLISH'" in script
        seen_slots.append(slot)
    assert len(seen_slots) == len(set(seen_slots)), "one script per slot"


def test_every_book_delta_and_trade_goes_out_once_in_its_instruments_order() -> None:
    drain = busy_drain(coalesce=False)
    assert sum(1 for d in drain.deltas if d) > 100 and sum(map(len, drain.trades.values())) > 10
    books: dict[bytes, list[tuple[bytes, bytes | None]]] = defaultdict(list)
    trades: dict[bytes, list[bytes]] = {}
    for command in slot_commands(drain, "md", history=7, value=VALUE):
        script, keys, argv = parse(command)
        if script is INSTRUMENTS_LUA:
            continue
        assert argv[2] == b"7"
        written, traded = unpack(keys, argv)
        for key, snapshot, channel, delta in written:
            books[key].append((snapshot, (channel, delta) if delta else None))
        for key, payloads in traded.items():
            assert key not in trades, "an instrument's trades split over two scripts"
            trades[key] = payloads
    expected: dict[bytes, list[tuple[bytes, bytes | None]]] = defaultdict(list)
    for (key, snapshot), delta in zip(drain.books, drain.deltas):
        expected[key].append((snapshot, delta))
    assert books == expected, "each instrument's books (and deltas), all of them, in the drain's order"
    assert max(map(len, books.values())) > 1, "without coalescing an instrument has several books in a drain"
    assert trades == drain.trades


def test_the_instrument_list_has_a_script_fenced_by_its_own_slot() -> None:
    box = PublishQueue(INSTRUMENTS[:2], IngestSettings(redis_cluster=True), IngestStats())
    drain = box.take(pts=1)
    (command,) = slot_commands(drain, "md", history=7, value=VALUE)
    script, keys, argv = parse(command)
    slot = key_slot(b"md:instruments")
    assert script is INSTRUMENTS_LUA and keys == [KEYS.fence(slot).encode(), b"md:instruments"]
    assert argv == [VALUE, drain.instruments]
    assert slot_commands(box.take(pts=2), "md", history=7, value=VALUE) == []


def test_instruments_sharing_a_slot_share_a_script_and_keep_their_order() -> None:
    # Ids whose hash tags collide: both instruments' writes go to one script of that slot.
    a = INSTRUMENTS[0]
    twin = next(n for n in (f"X{i}" for i in range(100_000)) if key_slot(n) == key_slot(a.id))
    b = Instrument(twin, a.kind, "a twin", a.tick_size, a.lot_size, a.price_decimals, a.size_decimals)
    drain = busy_drain(coalesce=False, instruments=(a, b))
    commands = slot_commands(drain, "md", history=7, value=VALUE)
    books = [c for c in commands if c[1] is SLOT_LUA]
    assert len(books) == 1
    written, traded = unpack(*parse(books[0])[1:])
    assert [k for k, *_ in written] == [k for k, _ in drain.books]
    assert set(traded) == set(drain.trades)


def test_tally_counts_what_each_slot_script_published() -> None:
    drain = busy_drain(coalesce=True)
    commands = slot_commands(drain, "md", history=7, value=VALUE)
    results: list[object] = []
    want = Counter[str]()
    for command in commands:
        script, keys, argv = parse(command)
        if script is INSTRUMENTS_LUA:
            results.append(0)
            continue
        books, traded = unpack(keys, argv)
        answer = [len(books), sum(1 for *_, d in books if d), sum(map(len, traded.values()))]
        want.update(books=answer[0], deltas=answer[1], trades=answer[2])
        results.append(answer)
    stats = IngestStats()
    assert tally(commands, results, stats) == []
    assert (stats.publishes, stats.delta_publishes, stats.trade_publishes, stats.drains) == (
        want["books"], want["deltas"], want["trades"], 1)
    assert stats.publishes == len(drain.books) and stats.trade_publishes == sum(map(len, drain.trades.values()))
    refused = Exception("FENCED 13 ingest:there:2:def")
    stats = IngestStats()
    assert tally(commands, [refused, *results[1:]], stats) == [refused]
    assert stats.drains == 1 and stats.publishes < want["books"]
    assert tally(commands, [refused] * len(commands), stats) == [refused] * len(commands)
    assert stats.drains == 1, "a round trip that wrote nothing is not a drain"
