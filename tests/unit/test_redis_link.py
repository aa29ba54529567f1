"""The ingestor's Redis client, its own logic on fakes: scripts as EVALSHA with the EVAL fallback, one round trip per call.

The real servers (one, and a cluster through a failover) are in tests/integration/test_ingest*.py.
"""

from __future__ import annotations

import hashlib
from collections import deque

import pytest
from hiredis import Reader
from redis.exceptions import ConnectionError, MovedError, NoScriptError, ResponseError

from marketdata.ingest.redis_link import (
    Shas,
    as_evalsha,
    send_scripts,
    unknown_scripts,
)

SCRIPT = b"return 1"
SHA = hashlib.sha1(SCRIPT).hexdigest().encode()


class FakeConnection:
    """Parses what is sent (RESP, as hiredis packed it) and answers each command from `answer`, in order."""

    def __init__(self, answer) -> None:  # type: ignore[no-untyped-def]
        self.answer = answer
        self.sent: list[list[list[bytes]]] = []  # one list of commands per write
        self.replies: deque[object] = deque()
        self.fail_on_read = False

    async def send_packed_command(self, data: bytes, check_health: bool = True) -> None:
        reader, commands = Reader(), []
        reader.feed(data)
        while (command := reader.gets()) is not False:
            commands.append(command)
        self.sent.append(commands)
        self.replies.extend(self.answer(c) for c in commands)

    async def read_response(self) -> object:
        if self.fail_on_read:
            raise ConnectionError("lost")
        reply = self.replies.popleft()
        if isinstance(reply, ResponseError):
            raise reply
        return reply


class FakePool:
    def __init__(self, connection: FakeConnection) -> None:
        self.connection = connection
        self.out = 0  # connections taken and not released

    async def get_connection(self) -> FakeConnection:
        self.out += 1
        return self.connection

    async def release(self, connection: FakeConnection) -> None:
        self.out -= 1


class FakeClient:
    def __init__(self, connection: FakeConnection) -> None:
        self.connection_pool = FakePool(connection)


def server(cached: set[bytes]):  # type: ignore[no-untyped-def]
    """A server's answers: EVAL caches its script, EVALSHA knows only cached ones; each script answers its first key."""

    def answer(command: list[bytes]) -> object:
        if command[0] == b"EVAL":
            cached.add(hashlib.sha1(command[1]).hexdigest().encode())
        elif command[0] == b"EVALSHA" and command[1] not in cached:
            return NoScriptError("No matching script. Please use EVAL.")
        elif command[0] != b"EVALSHA":
            return b"OK"
        return command[3]

    return answer


def evals(n: int) -> list[tuple[bytes, ...]]:
    return [(b"EVAL", SCRIPT, b"1", b"key%d" % i, b"value") for i in range(n)]


def test_an_eval_goes_as_the_evalsha_of_its_script_other_commands_as_they_are() -> None:
    shas = Shas()
    assert as_evalsha((b"EVAL", SCRIPT, b"1", b"k", b"v"), shas) == (b"EVALSHA", SHA, b"1", b"k", b"v")
    assert as_evalsha((b"SET", b"k", b"v"), shas) == (b"SET", b"k", b"v")
    assert shas(SCRIPT) is shas(SCRIPT), "computed once per script"


def test_only_noscript_answers_are_sent_again() -> None:
    results = [1, NoScriptError("NOSCRIPT"), ResponseError("FENCED 2 other"), MovedError("3999 127.0.0.1:7001"), NoScriptError("x")]
    assert unknown_scripts(results) == [1, 4]


@pytest.mark.asyncio
async def test_a_server_that_knows_the_script_gets_evalsha_only_in_one_write() -> None:
    connection = FakeConnection(server({SHA}))
    client = FakeClient(connection)
    assert await send_scripts(client, evals(3), Shas()) == [b"key0", b"key1", b"key2"]  # type: ignore[arg-type]
    assert [[c[0] for c in write] for write in connection.sent] == [[b"EVALSHA"] * 3]
    assert all(c[1] == SHA for c in connection.sent[0])
    assert client.connection_pool.out == 0


@pytest.mark.asyncio
async def test_noscript_answers_go_again_as_eval_and_take_their_places() -> None:
    """An empty script cache (a restarted server, a promoted replica): the refused commands go again as EVAL, in order."""
    cached: set[bytes] = set()
    connection = FakeConnection(server(cached))
    commands = [*evals(2), (b"SET", b"k", b"v"), *evals(3)[2:]]
    results = await send_scripts(FakeClient(connection), commands, Shas())  # type: ignore[arg-type]
    assert results == [b"key0", b"key1", b"OK", b"key2"]
    first, again = connection.sent
    assert [c[0] for c in first] == [b"EVALSHA", b"EVALSHA", b"SET", b"EVALSHA"]
    assert again == [list(commands[i]) for i in (0, 1, 3)], "the three scripts as the EVALs they were built as"
    assert cached == {SHA}
    await send_scripts(FakeClient(connection), evals(1), Shas())  # type: ignore[arg-type]
    assert [c[0] for c in connection.sent[-1]] == [b"EVALSHA"] and len(connection.sent) == 3, "cached now: no fallback"


@pytest.mark.asyncio
async def test_error_replies_are_results_and_a_lost_connection_raises_and_goes_back_to_the_pool() -> None:
    refused = ResponseError("FENCED 9 someone")
    connection = FakeConnection(lambda c: refused if c[3] == b"key1" else c[3])
    client = FakeClient(connection)
    assert await send_scripts(client, evals(3), Shas()) == [b"key0", refused, b"key2"]  # type: ignore[arg-type]
    connection.fail_on_read = True
    with pytest.raises(ConnectionError):
        await send_scripts(client, evals(2), Shas())  # type: ignore[arg-type]
    assert client.connection_pool.out == 0
