"""Several ingestors, one publisher: the lease, its fence and the takeovers, against a real Redis.

The scripts are called directly first; then ingestors run in this process (one leads, one
stands by) and as `python -m marketdata ingest` processes that the tests kill -9, SIGSTOP
and SIGTERM. Each ingestor publishes books of its own depth, so every message on the bus
says which one wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aredis
from prometheus_client.parser import text_string_to_metric_families

from marketdata import schema
from marketdata.ingest.lease import Fence, Holder, Lease
from marketdata.ingest.publish_queue import Drain, drain_commands
from marketdata.supervisor.ports import free_port
from tests.integration.test_ingest import Listener, own_sim, running, settings_for
from tests.support import async_wait_for, wait_for

ROOT = Path(__file__).resolve().parents[2]
IDS = ("BTC-USD", "ETH-USD")
KEYS = (b"md:leader", b"md:leader:token", b"md:heartbeat")


# -- the scripts, called directly ----------------------------------------------------------------


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_a_stale_token_writes_nothing(rclient: redis.Redis) -> None:
    old, new = Lease("ingest:a:1:aa", 1.0), Lease("ingest:b:2:bb", 1.0)
    assert old.acquired(rclient.execute_command(*old.acquire(KEYS, b'{"who":"a"}', 3000)), 0.0) is not None
    assert old.value == b"1 ingest:a:1:aa" and rclient.get("md:heartbeat") == b'{"who":"a"}'
    taken, holder, pttl = rclient.execute_command(*new.acquire(KEYS, b"", 3000))
    assert (taken, holder) == (0, old.value) and 900 < pttl <= 1000, "held: not taken, and when it expires"
    rclient.delete("md:leader")  # as if it expired while `old` was paused
    new.acquired(rclient.execute_command(*new.acquire(KEYS, b"", 3000)), 0.0)
    assert new.value == b"2 ingest:b:2:bb"

    drain = Drain(instruments=b"[]", books=[(b"md:book:BTC-USD", b"old book")], trades={b"md:trades:BTC-USD": [b"old trade"]})
    pubsub = rclient.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("md:*")
    try:
        for command in drain_commands(drain, b"md:instruments", 50, Fence(b"md:leader", old.value)):
            with pytest.raises(redis.ResponseError, match=r"^FENCED 2 ingest:b:2:bb$"):
                rclient.execute_command(*command)
        with pytest.raises(redis.ResponseError, match=r"^FENCED 2 ingest:b:2:bb$"):
            rclient.execute_command(*old.renew(KEYS, b"late beat", 3000))
        assert rclient.execute_command(*old.release(b"md:leader")) == 0, "not its lease to delete"
        assert rclient.get("md:leader") == new.value
        assert rclient.exists("md:book:BTC-USD", "md:trades:BTC-USD", "md:instruments") == 0
        assert rclient.get("md:heartbeat") == b'{"who":"a"}'
        # The holder's writes go through, in the same order, on the same channels.
        for command in drain_commands(drain, b"md:instruments", 50, Fence(b"md:leader", new.value)):
            rclient.execute_command(*command)
        got: list[tuple[bytes, bytes]] = []

        def two_messages() -> bool:
            msg = pubsub.get_message(timeout=0.1)  # None for the subscription's confirmation
            if msg is not None:
                got.append((msg["channel"], msg["data"]))
            return len(got) >= 2

        wait_for(two_messages, 5, interval=0, what="two messages")
        # The first messages on the bus are the holder's: the fenced scripts published nothing before them.
        assert got == [(b"md:book:BTC-USD", b"old book"), (b"md:trades:BTC-USD", b"old trade")]
    finally:
        pubsub.close()
    assert rclient.get("md:book:BTC-USD") == b"old book" and rclient.lrange("md:trades:BTC-USD", 0, -1) == [b"old trade"]
    assert rclient.execute_command(*new.release(b"md:leader")) == 1 and not rclient.exists("md:leader")


def test_tokens_only_grow_even_when_redis_loses_them(rclient: redis.Redis) -> None:
    lease = Lease("ingest:a:1:aa", 0.2)
    lease.held_by(Holder(41, "ingest:gone:9:ff"))  # seen before Redis restarted empty
    lease.acquired(rclient.execute_command(*lease.acquire(KEYS, b"", 3000)), 0.0)
    assert lease.value == b"42 ingest:a:1:aa" and rclient.get("md:leader:token") == b"42"
    assert 0 < rclient.pttl("md:leader") <= 200
    assert rclient.execute_command(*lease.renew(KEYS, b"beat", 3000)) == 1
    assert 0 < rclient.pttl("md:leader") <= 200 and 2000 < rclient.pttl("md:heartbeat") <= 3000


def test_a_leader_takes_its_expired_lease_back_unless_someone_acquired_since(rclient: redis.Redis) -> None:
    # The lease expired while its holder could not reach Redis (a failover): nobody took it,
    # so the holder's renewal takes it back, same value, heartbeat and all.
    lease = Lease("ingest:a:1:aa", 0.2)
    lease.acquired(rclient.execute_command(*lease.acquire(KEYS, b"", 3000)), 0.0)
    rclient.delete("md:leader")  # expired
    assert rclient.execute_command(*lease.renew(KEYS, b"beat", 3000)) == 2
    assert rclient.get("md:leader") == lease.value and rclient.get("md:heartbeat") == b"beat"
    rclient.delete("md:leader", "md:leader:token")  # the failover lost the counter too: it is set back to our token
    assert rclient.execute_command(*lease.renew(KEYS, b"beat", 3000)) == 2
    assert rclient.get("md:leader:token") == lease.value.split()[0]  # type: ignore[union-attr]
    # Expired, and a standby acquired (and released) since: the counter moved past us, we are fenced.
    rclient.delete("md:leader")
    other = Lease("ingest:b:2:bb", 0.2)
    other.acquired(rclient.execute_command(*other.acquire(KEYS, b"", 3000)), 0.0)
    rclient.delete("md:leader", "md:heartbeat")
    with pytest.raises(redis.ResponseError, match="FENCED -"):
        rclient.execute_command(*lease.renew(KEYS, b"beat", 3000))
    assert rclient.get("md:leader") is None and rclient.get("md:heartbeat") is None, "a refused renewal writes nothing"


# -- two ingestors in this process -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_ingestors_one_publishes_the_other_keeps_warm_books(redis_url: str) -> None:
    async with own_sim(instruments=IDS) as sim, Listener(redis_url, "md:book:*") as books:
        address = f"127.0.0.1:{sim.port}"
        client = aredis.Redis.from_url(redis_url)
        try:
            async with running(settings_for(address, redis_url, depth=12)) as leader:
                await async_wait_for(lambda: leader.lease.leading, 10, what="the first ingestor to lead")
                async with running(settings_for(address, redis_url, depth=13)) as standby:
                    await async_wait_for(lambda: len(books.messages) >= 50 and standby.stats.events >= 200, 10, what="publishes, and a warm standby")
                    assert not standby.lease.leading and standby.live and standby.queue is not None
                    assert all(standby.queue.books.is_ready(i) for i in IDS), "the standby's books are ready to publish"
                    holder = Holder.parse(await client.get("md:leader"))
                    assert holder is not None and holder.name == leader.source
                    assert orjson.loads(await client.get("md:heartbeat"))["source"] == leader.source
                    names = {line["name"] for line in await client.client_list() if line["name"].startswith("ingest:")}
                    assert names == {leader.source, standby.source}, "both are connected to Redis"
                # The standby stopped first, so it never took over.
            await books.settle()
        finally:
            await client.aclose()
    published = [len(schema.decode(p)["bids"]) for c, p in books.messages if not c.endswith("zz-settle")]
    assert set(published) == {leader.settings.depth}, "every book on the bus is the leader's"
    assert standby.stats.publishes == 0 and standby.stats.fenced_writes == 0
    # One writer: the bus carries what the leader counted, plus at most the drain in flight when it was
    # stopped (written, not yet counted): one book per instrument.
    assert leader.stats.publishes <= len(published) <= leader.stats.publishes + len(IDS), (len(published), leader.stats)
    assert leader.stats.leader_changes == 2 and leader.stats.fenced_writes == 0  # took it, released it


@pytest.mark.asyncio
async def test_a_leader_whose_lease_was_taken_is_fenced_at_its_next_write(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="marketdata.ingest.ingestor")
    client = aredis.Redis.from_url(redis_url)
    # A 30 s lease is renewed every 10 s: within this test only the leader's publishes meet the fence.
    async with own_sim(instruments=IDS, rate=500.0) as sim, Listener(redis_url, "md:*") as bus:
        try:
            async with running(settings_for(f"127.0.0.1:{sim.port}", redis_url, lease=30.0)) as ing:
                await async_wait_for(lambda: ing.lease.leading and ing.stats.publishes >= 20, 10, what="the leader publishing")
                # The lease changes hands behind its back (as after a pause), and a marker on the bus
                # shows where: in Redis's own order, whatever runs after this transaction is refused.
                async with client.pipeline(transaction=True) as steal:
                    await steal.set("md:leader", "99 ingest:intruder:9:ff").publish("md:zz-stolen", b"here").execute()
                await async_wait_for(lambda: not ing.lease.leading, 5, what="the leader to notice")
                assert ing.stats.fenced_writes >= 1 and ing.stats.leader_changes == 2
                published = ing.stats.publishes
                await async_wait_for(lambda: ing.stats.events >= 2 * published, 10, what="the ex-leader reading on")
                assert ing.stats.publishes == published, "a standby publishes nothing"
                assert await client.get("md:leader") == b"99 ingest:intruder:9:ff", "and leaves the lease alone"
            await bus.settle()
        finally:
            await client.aclose()
    channels = [c for c, _ in bus.messages]
    stolen = channels.index("md:zz-stolen")
    assert stolen >= 20 and [c for c in channels[stolen + 1 :] if not c.endswith("zz-settle")] == []
    lost = [r.getMessage() for r in caplog.records if "lost the lease" in r.getMessage()]
    assert lost == ["lost the lease to ingest:intruder:9:ff (token 99); standing by (a write was fenced)"]


# -- ingestor processes --------------------------------------------------------------------------


@dataclass
class Proc:
    """A `python -m marketdata ingest` child with its own depth and metrics port."""

    popen: subprocess.Popen[bytes]
    depth: int
    metrics_port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _scrape(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}

    async def metrics(self) -> dict[str, float]:
        """Its /metrics as {sample: value}; {} while it does not answer."""
        return await asyncio.to_thread(self._scrape)


@contextlib.asynccontextmanager
async def ingestors(sim: str, redis_url: str, tmp_path: Path, depths: tuple[int, ...] = (12, 13)) -> AsyncIterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for depth in depths:
            log = tmp_path / f"ingest-{depth}.log"
            port = free_port()
            argv = [sys.executable, "-m", "marketdata", "ingest", "--sim", sim, "--redis-url", redis_url, "--depth", str(depth),
                    "--instruments", ",".join(IDS), "--metrics-port", str(port)]  # fmt: skip
            with log.open("wb") as out:
                popen = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out)
            procs.append(Proc(popen, depth, port, log))
        yield procs
    finally:
        for p in procs:
            if p.popen.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.popen.kill()
            p.popen.wait(10)


async def roles(procs: list[Proc], client: aredis.Redis) -> tuple[Proc, Proc]:
    """(leader, standby) once one leads and the other's books are warm (its /metrics says so)."""

    async def leader() -> Proc | None:
        holder = Holder.parse(await client.get("md:leader"))
        return next((p for p in procs if holder and holder.name.split(":")[2] == str(p.pid)), None)

    lead = await async_wait_for(leader, 20, what="a leader among the processes")
    (stand,) = [p for p in procs if p is not lead]

    async def warm() -> bool:
        m = await stand.metrics()
        return m.get("ingest_sim_live") == 1 and m.get("ingest_events_total", 0) >= 100 and m.get("ingest_leader") == 0

    await async_wait_for(warm, 20, what="a warm standby")
    return lead, stand


def first_books_after(books: Listener, t0: float, depth: int) -> dict[str, float]:
    """Per instrument, when the first book of `depth` levels arrived after `t0`."""
    out: dict[str, float] = {}
    for at, (channel, payload) in zip(books.arrivals, books.messages):
        if at > t0 and not channel.endswith("zz-settle"):
            msg = schema.decode(payload)
            if len(msg["bids"]) == depth:
                out.setdefault(msg["instrument"], at)
    return out


def assert_in_order(books: Listener) -> None:
    """Each instrument's books go forward in (epoch, seq): nothing older after newer, and a repeat only from a new leader.

    A new leader republishes every book at once; when it takes over before the next event
    (SIGTERM hands over in milliseconds) that is the book the old leader published last,
    once more, which the bridges drop as not newer. Anything else repeated is a bug.
    """
    last: dict[str, tuple[int, int]] = {}
    repeats: dict[str, int] = {}
    for channel, payload in books.messages:
        if not channel.endswith("zz-settle"):
            msg = schema.decode(payload)
            name, order = msg["instrument"], (msg["epoch"], msg["seq"])
            before = last.get(name, (-1, -1))
            assert order >= before, f"{name} went from {before} to {order}"
            if order == before:
                repeats[name] = repeats.get(name, 0) + 1
                assert repeats[name] == 1, f"{name} repeated {order} more than once: only a takeover repeats a book"
            last[name] = order


async def _holder_is(client: aredis.Redis, proc: Proc) -> Holder | None:
    holder = Holder.parse(await client.get("md:leader"))
    return holder if holder is not None and holder.name.split(":")[2] == str(proc.pid) else None


async def _heartbeat_from(client: aredis.Redis, proc: Proc) -> bool:
    raw = await client.get("md:heartbeat")
    return raw is not None and orjson.loads(raw)["source"].split(":")[2] == str(proc.pid)


@dataclass
class Pair:
    """Two ingestor processes on one simulator and one Redis, and a tape of the books on the bus."""

    lead: Proc
    stand: Proc
    books: Listener
    client: aredis.Redis

    async def takeover(self, t0: float) -> float:
        """Seconds from `t0` until the standby leads and has published every instrument's book."""
        holder = await async_wait_for(lambda: _holder_is(self.client, self.stand), 5, what="the standby to take the lease")
        await async_wait_for(lambda: len(first_books_after(self.books, t0, self.stand.depth)) == len(IDS), 5, what="fresh books from the standby")
        assert holder.token >= 2
        await async_wait_for(lambda: _heartbeat_from(self.client, self.stand), 5, what="the new leader's heartbeat")
        return max(first_books_after(self.books, t0, self.stand.depth).values()) - t0


@contextlib.asynccontextmanager
async def pair(redis_url: str, tmp_path: Path) -> AsyncIterator[Pair]:
    """Once one leads and the other is warm; the tape is settled and checked for order on the way out."""
    client = aredis.Redis.from_url(redis_url)
    try:
        async with own_sim(instruments=IDS) as sim, Listener(redis_url, "md:book:*") as books:
            async with ingestors(f"127.0.0.1:{sim.port}", redis_url, tmp_path) as procs:
                lead, stand = await roles(procs, client)
                assert not first_books_after(books, 0.0, stand.depth), "the standby published before it led"
                yield Pair(lead, stand, books, client)
                await books.settle()
        assert_in_order(books)
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_kill_9_of_the_leader_the_standby_publishes_within_2_s(redis_url: str, tmp_path: Path) -> None:
    async with pair(redis_url, tmp_path) as p:
        t0 = time.monotonic()
        p.lead.popen.kill()
        elapsed = await p.takeover(t0)
        print(f"\ntakeover after kill -9: {elapsed:.3f} s")
        assert elapsed < 2.0, f"fresh books {elapsed:.2f} s after the kill"
        m = await p.stand.metrics()
        assert (m["ingest_leader"], m["ingest_leader_changes_total"]) == (1, 1) and m["ingest_publishes_total"] > 0


@pytest.mark.asyncio
async def test_a_paused_leader_is_fenced_off_when_it_wakes(redis_url: str, tmp_path: Path) -> None:
    async with pair(redis_url, tmp_path) as p:
        t0 = time.monotonic()
        os.kill(p.lead.pid, signal.SIGSTOP)  # a leader frozen past its lease (a long GC, a paused VM)
        elapsed = await p.takeover(t0)
        print(f"\ntakeover after SIGSTOP: {elapsed:.3f} s")
        await p.books.settle()
        woke = len(p.books.messages)  # everything the leader wrote before its pause has arrived
        os.kill(p.lead.pid, signal.SIGCONT)

        async def fenced_off() -> bool:
            m = await p.lead.metrics()
            return m.get("ingest_fenced_writes_total", 0) >= 1 and m.get("ingest_leader") == 0

        await async_wait_for(fenced_off, 10, what="the woken leader to be fenced off")
        m = await p.lead.metrics()
        assert m["ingest_publishes_total"] > 0 and m["ingest_leader_changes_total"] == 2 and m["ingest_sim_live"] == 1
        # Let the woken ingestor run a while as a standby: its stream is live again, it writes nothing.
        await async_wait_for(lambda: len(p.books.messages) >= woke + 20, 10, what="more books from the new leader")
        await p.books.settle()
        after = [len(schema.decode(b)["bids"]) for c, b in p.books.messages[woke:] if not c.endswith("zz-settle")]
        assert after and set(after) == {p.stand.depth}, f"the fenced ex-leader published {after.count(p.lead.depth)} books"
        log = p.lead.log.read_text()
        assert "lost the lease to ingest:" in log and "standing by" in log, log[-2000:]


@pytest.mark.asyncio
async def test_sigterm_hands_the_lease_over_at_once(redis_url: str, tmp_path: Path) -> None:
    async with pair(redis_url, tmp_path) as p:
        t0 = time.monotonic()
        p.lead.popen.terminate()
        elapsed = await p.takeover(t0)
        print(f"\ntakeover after SIGTERM: {elapsed:.3f} s")
        assert elapsed < 0.6, f"fresh books {elapsed:.2f} s after SIGTERM: the lease (1 s) was not released"
        assert await asyncio.to_thread(p.lead.popen.wait, 10) == 0
    assert "released the lease (token 1): stopping" in p.lead.log.read_text(), p.lead.log.read_text()[-2000:]
    assert "took the lease (token 2)" in p.stand.log.read_text()


@pytest.mark.asyncio
async def test_a_leader_whose_stream_stays_down_lets_a_live_standby_publish(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="marketdata.ingest.ingestor")
    # Two simulators stand for one seen through two networks: the leader's goes away, the standby's stays.
    async with own_sim(instruments=IDS) as first, own_sim(instruments=IDS) as second, Listener(redis_url, "md:book:*") as books:
        async with running(settings_for(f"127.0.0.1:{first.port}", redis_url, depth=12)) as leader:
            await async_wait_for(lambda: leader.lease.leading, 10, what="the first ingestor to lead")
            async with running(settings_for(f"127.0.0.1:{second.port}", redis_url, depth=13)) as standby:
                await async_wait_for(lambda: standby.live and standby.stats.events >= 50, 10, what="a warm standby")
                await first.stop(0)
                await async_wait_for(lambda: standby.lease.leading, 5, what="the standby to take over")
                assert not leader.lease.leading and not leader.live
                await async_wait_for(lambda: first_books_after(books, 0.0, 13).keys() == set(IDS), 5, what="the standby's books")
    released = [r.getMessage() for r in caplog.records if "released the lease" in r.getMessage()]
    assert released and released[0].startswith("released the lease (token 1): the simulator stream has been down for 1."), released
