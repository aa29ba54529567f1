"""The users of the roles on the project's own server, as `up` and the suite run it.

Nobody who does not log in can read or write; each role can do what it needs and is
refused the rest. The ingestor's real publishing path (its scripts included: Redis checks
the commands a script runs against the caller's rights) runs as `ingest`.
"""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from marketdata.ingest.ingestor import Ingestor
from marketdata.settings import IngestSettings
from marketdata.supervisor.acl import ADMIN, ROLES, acl_lines
from marketdata.supervisor.redis_server import RedisServer
from tests.conftest import RunningSim
from tests.support import async_wait_for

# NOAUTH, NOPERM, and a script's "ACL failure in script: User ingest has no permissions ..."
REFUSAL = re.compile(r"authentication required|no permissions", re.IGNORECASE)


@pytest.fixture
def clients(redis_url: str, redis_server: RedisServer) -> Iterator[Callable[[str], redis.Redis]]:
    """A client of the shared (emptied) server per user: a role, or "nobody" for no login at all."""
    made: list[redis.Redis] = []

    def make(user: str) -> redis.Redis:
        # No retries: redis-py retries a refused login (a ConnectionError) for seconds.
        # RESP2 for nobody: RESP3's HELLO would be refused before the command we mean to try.
        options = {"socket_timeout": 5, "retry": Retry(NoBackoff(), 0)}
        if user == "nobody":
            client = redis.Redis(host=redis_server.host, port=redis_server.port, protocol=2, **options)
        else:
            client = redis.Redis.from_url(redis_server.url_for(user), **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def refused(attempts: dict[str, Callable[[], object]]) -> list[str]:
    """The attempts that were NOT refused (NOAUTH or NOPERM), with what happened: the test wants none."""
    allowed = []
    for what, attempt in attempts.items():
        try:
            attempt()
        except (redis.ResponseError, redis.AuthenticationError) as exc:
            if REFUSAL.search(str(exc)):
                continue
            allowed.append(f"{what}: {exc}")
        else:
            allowed.append(f"{what}: done")
    return allowed


def subscribe(client: redis.Redis, channel: str, pattern: bool = False) -> None:
    """SUBSCRIBE (or PSUBSCRIBE) and wait for the server's answer, which raises if refused."""
    pubsub = client.pubsub()
    try:
        (pubsub.psubscribe if pattern else pubsub.subscribe)(channel)
        reply = pubsub.get_message(timeout=5)
        assert reply is not None and reply["type"] in ("subscribe", "psubscribe"), reply
    finally:
        pubsub.close()


def test_without_logging_in_nothing_is_allowed(clients: Callable[[str], redis.Redis], redis_server: RedisServer) -> None:
    nobody = clients("nobody")
    assert refused({
        "PUBLISH": lambda: nobody.publish("md:book:BTC-USD", b"{}"),
        "SUBSCRIBE": lambda: subscribe(nobody, "md:book:BTC-USD"),
        "GET": lambda: nobody.get("md:book:BTC-USD"),
        "SET": lambda: nobody.set("md:book:BTC-USD", b"{}"),
        "PING": lambda: nobody.ping(),
    }) == []  # fmt: skip
    wrong = redis_server.url_for("bridge").replace(redis_server.password("bridge"), "wrong")
    client = redis.Redis.from_url(wrong, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()


def test_each_role_is_refused_what_it_must_not_do(clients: Callable[[str], redis.Redis]) -> None:
    ingest, bridge, inspect = clients("ingest"), clients("bridge"), clients("inspect")
    assert refused({
        "bridge PUBLISH": lambda: bridge.publish("md:book:BTC-USD", b"{}"),
        "bridge SET": lambda: bridge.set("md:book:BTC-USD", b"{}"),
        "bridge EVAL": lambda: bridge.eval("return 1", 0),
        "bridge DEL": lambda: bridge.delete("md:book:BTC-USD"),
        "bridge PSUBSCRIBE": lambda: subscribe(bridge, "md:*", pattern=True),
        "inspect PUBLISH": lambda: inspect.publish("md:book:BTC-USD", b"{}"),
        "inspect SET": lambda: inspect.set("md:book:BTC-USD", b"{}"),
        "inspect KEYS": lambda: inspect.keys("*"),
        "inspect GET outside the prefix": lambda: inspect.get("other"),
        "ingest FLUSHALL": lambda: ingest.flushall(),
        "ingest CONFIG GET": lambda: ingest.config_get("maxmemory"),
        "ingest CONFIG SET": lambda: ingest.config_set("maxmemory", "1"),
        "ingest KEYS": lambda: ingest.keys("*"),
        "ingest DEBUG": lambda: ingest.execute_command("DEBUG", "SLEEP", "0"),
        "ingest CLIENT LIST": lambda: ingest.client_list(),
        "ingest SCRIPT FLUSH": lambda: ingest.script_flush(),
        "ingest ACL": lambda: ingest.acl_list(),
        "ingest SET outside the prefix": lambda: ingest.set("other", b"x"),
        "ingest PUBLISH outside the prefix": lambda: ingest.publish("other", b"x"),
        "ingest SUBSCRIBE": lambda: subscribe(ingest, "md:book:BTC-USD"),
        # a script runs with its caller's rights
        "ingest EVAL writing outside the prefix": lambda: ingest.eval("return redis.call('SET', KEYS[1], 'x')", 1, "other"),
        "ingest EVAL of FLUSHALL": lambda: ingest.eval("return redis.call('FLUSHALL')", 0),
    }) == []  # fmt: skip


def test_each_role_can_do_what_it_needs(clients: Callable[[str], redis.Redis]) -> None:
    ingest, bridge, inspect = clients("ingest"), clients("bridge"), clients("inspect")
    assert clients("admin").execute_command("DEBUG", "SLEEP", "0")  # the tests' own user may stall the server
    ingest.set("md:book:BTC-USD", b"{}")
    ingest.lpush("md:trades:BTC-USD", b"t")
    assert bridge.get("md:book:BTC-USD") == inspect.get("md:book:BTC-USD") == b"{}"
    assert bridge.mget(["md:book:BTC-USD"]) == [b"{}"]
    assert bridge.lrange("md:trades:BTC-USD", 0, -1) == inspect.lrange("md:trades:BTC-USD", 0, -1) == [b"t"]
    for client in (bridge, inspect):
        subscribe(client, "md:book:BTC-USD")
    for pattern in ("md:*", "md:book:*", "md:trades:*"):
        subscribe(inspect, pattern, pattern=True)
    assert set(inspect.scan_iter(match="md:*")) == {b"md:book:BTC-USD", b"md:trades:BTC-USD"}
    assert inspect.ttl("md:book:BTC-USD") == -1


def test_the_lease_commands_run_in_a_script_as_ingest(clients: Callable[[str], redis.Redis]) -> None:
    """What the hot-standby's lease scripts do on md:leader and md:leader:token, as `ingest`."""
    ingest = clients("ingest")
    script = """
    local token = redis.call('INCR', KEYS[2])
    redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'NX', 'PX', 1000)
    redis.call('PEXPIRE', KEYS[1], 2000)
    local ttl = redis.call('PTTL', KEYS[1])
    local held = redis.call('GET', KEYS[1])
    redis.call('DEL', KEYS[1])
    return {held, ttl}
    """
    held, ttl = ingest.eval(script, 2, "md:leader", "md:leader:token", "me")
    assert held == b"1 me" and 1000 < ttl <= 2000
    sha = clients("admin").script_load(script)
    assert ingest.evalsha(sha, 2, "md:leader", "md:leader:token", "me")[0] == b"2 me"


@pytest.mark.asyncio
async def test_an_ingestor_publishes_books_and_trades_as_ingest(sim: RunningSim, ingest_url: str, redis_server: RedisServer) -> None:
    settings = IngestSettings(sim=sim.address, redis_url=ingest_url, instruments=("BTC-USD",), heartbeat_ttl=1.5)
    ingestor = Ingestor(settings)
    reader = aredis.Redis.from_url(redis_server.url_for("bridge"), socket_timeout=None, protocol=2)
    pubsub = reader.pubsub()
    await pubsub.subscribe("md:book:BTC-USD", "md:trades:BTC-USD")
    seen: dict[str, int] = {}

    async def both_kinds() -> bool:
        if task.done():
            task.result()  # its error, if it ended with one
            raise AssertionError("the ingestor stopped")
        assert ingestor.stats.redis_reconnects == 0, "a write of the ingestor was refused (see its log)"
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None:
            kind = orjson.loads(msg["data"])["type"]
            seen[kind] = seen.get(kind, 0) + 1
        return seen.get("book", 0) >= 3 and seen.get("trade", 0) >= 1

    task = asyncio.create_task(ingestor.run())
    try:
        await async_wait_for(both_kinds, 20, interval=0, what="books and a trade published by the ingest user")
        inspect = aredis.Redis.from_url(redis_server.url_for("inspect"))
        try:
            assert orjson.loads(await inspect.get("md:book:BTC-USD"))["type"] == "book"
            assert await inspect.get("md:heartbeat") is not None
            assert await inspect.lrange("md:trades:BTC-USD", 0, 0)
            assert [i["id"] for i in orjson.loads(await inspect.get("md:instruments"))] == ["BTC-USD"]
        finally:
            await inspect.aclose()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pubsub.aclose()
        await reader.aclose()


def test_the_servers_acl_file_is_private_and_holds_no_password(clients: Callable[[str], redis.Redis], redis_server: RedisServer) -> None:
    path = Path(clients("admin").config_get("aclfile")["aclfile"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert not any(redis_server.password(user) in text for user in (*ROLES, ADMIN)), "a cleartext password in the ACL file"
    assert text.splitlines()[:4] == acl_lines({user: redis_server.password(user) for user in ROLES})


def test_a_restarted_server_keeps_the_passwords(private_redis: RedisServer) -> None:
    url = private_redis.url_for("inspect")
    private_redis.restart()
    assert private_redis.url_for("inspect") == url
    client = redis.Redis.from_url(url)
    try:
        assert client.ping()
    finally:
        client.close()
