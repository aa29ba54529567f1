"""The bridge forwards only books that prove themselves: a real Redis, real uvicorn, real WebSocket clients.

Real books go out as the ingestor writes them, through its own script (SET of the
last-value key and PUBLISH in one EVAL); forgeries are PUBLISHed alone, as anyone
with a connection to Redis could.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import redis

from marketdata.ingest.lease import Fence
from marketdata.ingest.publish_queue import Drain, drain_commands
from tests.integration.test_bridge import BOOK, Running, client, numsub, rclient, recv, start_bridge  # noqa: F401 (fixtures)
from tests.support import wait_for
from tests.unit.bridge_fakes import snapshot as small_snapshot

E1, E2 = 1_764_000_000_000_000, 1_764_000_900_000_000  # two simulator runs, µs since the Unix epoch


def ingest(client: redis.Redis, payload: bytes) -> None:
    """Publish a book as the leading ingestor does: its fenced drain commands, one EVAL that SETs the key and PUBLISHes."""
    fence = Fence(b"md:leader", b"1 test-ingestor")
    client.set(fence.key, fence.value)  # the lease, held by this test for as long as it runs
    for command in drain_commands(Drain(books=[(BOOK.encode(), payload)]), b"md:instruments", 50, fence):
        client.execute_command(*command)


def book(seq: int, epoch: int, checksum: int | None = None) -> bytes:
    return small_snapshot(seq, epoch=epoch, checksum=checksum)


def rejected(bridge: Running, reason: str) -> float:
    """bridge_books_rejected_total{reason=...} as /metrics says it."""
    text = bridge.get("/metrics").text
    found = re.search(rf'^bridge_books_rejected_total\{{reason="{reason}"\}} (\S+)$', text, re.MULTILINE)
    assert found, f"no bridge_books_rejected_total for {reason} in /metrics"
    return float(found.group(1))


def test_a_forged_book_with_a_wrong_checksum_reaches_no_socket_and_is_counted(
    start_bridge: Callable[..., Running], rclient: redis.Redis, ingest_url: str
) -> None:
    # Forged with the ingestor's own credentials: the strongest writer a forger could steal.
    writer = redis.Redis.from_url(ingest_url)
    ingest(writer, book(1, E1))
    bridge = start_bridge()
    with writer, client(bridge.ws + "/ws/market_data/BTC-USD") as a, client(bridge.ws + "/ws/market_data/BTC-USD") as b:
        assert recv(a)["seq"] == recv(b)["seq"] == 1
        wait_for(lambda: numsub(rclient) == 1, what="the subscription")
        writer.publish(BOOK, book(2, E1, checksum=4242))
        wait_for(lambda: rejected(bridge, "checksum") == 1, what="the forgery counted")
        ingest(writer, book(3, E1))
        assert recv(a)["seq"] == recv(b)["seq"] == 3, "the forged seq 2 reached a socket"
    assert rejected(bridge, "order") == rejected(bridge, "channel") == rejected(bridge, "malformed") == 0
    assert bridge.stats.books_rejected["checksum"] == 1


def test_a_forged_book_with_a_huge_seq_does_not_stop_the_real_books(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    ingest(rclient, book(1, E1))
    bridge = start_bridge()
    with client(bridge.ws + "/ws/market_data/BTC-USD") as ws:
        assert recv(ws)["seq"] == 1
        wait_for(lambda: numsub(rclient) == 1, what="the subscription")
        # Each forgery alone, so that no real book read with it in one batch supersedes it unexamined.
        rclient.publish(BOOK, book(10**15, E1, checksum=7))  # a made-up checksum
        wait_for(lambda: rejected(bridge, "checksum") == 1, what="the made-up checksum refused")
        rclient.publish(BOOK, book(10**12, E1))  # a real book's levels, so a true checksum, and a huge seq
        wait_for(lambda: rejected(bridge, "order") == 1, what="the huge seq refused by the last-value key")
        for seq in (2, 3, 4):
            ingest(rclient, book(seq, E1))
            assert recv(ws)["seq"] == seq, "a real book after the forgeries did not come through"


def test_a_new_simulator_epoch_reaches_sockets_at_once_with_no_dropped_books(start_bridge: Callable[..., Running], rclient: redis.Redis) -> None:
    ingest(rclient, book(1, E1))
    bridge = start_bridge()
    with client(bridge.ws + "/ws/market_data/BTC-USD") as ws, client(bridge.ws + "/ws") as mux:
        mux.send('{"op":"subscribe","instruments":["BTC-USD"]}')
        assert recv(mux)["type"] == "subscribed"
        assert recv(ws)["seq"] == recv(mux)["seq"] == 1
        wait_for(lambda: numsub(rclient) == 1, what="the subscription")
        for seq in range(2, 501):  # the first run gets far
            ingest(rclient, book(seq, E1))
        for sock in (ws, mux):
            while recv(sock)["seq"] != 500:
                pass
        stale = bridge.stats.stale
        # The simulator restarts: a new epoch, and its seqs start again far below 500.
        for seq in range(6):
            t0 = time.monotonic()
            ingest(rclient, book(seq, E2))
            for sock in (ws, mux):
                got = recv(sock)
                assert (got["epoch"], got["seq"]) == (E2, seq), got
            assert time.monotonic() - t0 < 2.0, "a new epoch must not wait for anything but one GET"
        # A late book of the first run, PUBLISHed after the restart, is refused by the key.
        rclient.publish(BOOK, book(501, E1))
        wait_for(lambda: rejected(bridge, "order") == 1, what="the straggler refused by the last-value key")
        ingest(rclient, book(6, E2))
        assert (recv(ws)["epoch"], recv(mux)["seq"]) == (E2, 6)
    assert bridge.stats.stale == stale, "a book of the new epoch was dropped as stale"
    assert sum(bridge.stats.books_rejected.values()) == 1
    assert bridge.get("/api/book/BTC-USD").json()["epoch"] == E2
