"""Redis over TLS (rediss://), with the users of the roles: the URL is all it takes.

The embedded Valkey is built without TLS, so these tests run a TLS-capable
`redis-server` or `valkey-server` from PATH (Debian's: `apt-get install redis-server`;
.ci/run installs it) on a free port, with a throwaway CA and server certificate made by
the `openssl` command in a temporary folder. Without one they are skipped, except in CI
(CI set), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from websockets.sync.client import connect

from marketdata import schema
from marketdata.processes import LoggedProcess
from marketdata.supervisor.ports import free_port
from marketdata.supervisor.redis_server import (
    RedisServer,
    RedisServerError,
    Tls,
    server_binary,
)
from tests.conftest import RunningSim
from tests.support import wait_for


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason + "; CI must run the TLS tests (.ci/run installs redis-server)")
    pytest.skip(reason)


def _openssl(folder: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def make_certificates(folder: Path) -> Tls:
    """A CA, and a certificate it signed for 127.0.0.1 and localhost, valid for a day."""
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(folder, "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=marketdata test CA")
    _openssl(folder, "req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(folder, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "1", "-extfile", "san.cnf")
    return Tls(cert=folder / "server.crt", key=folder / "server.key", ca=folder / "ca.crt")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A TLS-only server with the users of the roles, from the first binary on this machine that can."""
    if shutil.which("openssl") is None:
        _unavailable("no openssl command to make the test certificates")
    tls = make_certificates(tmp_path)
    candidates = dict.fromkeys(p for p in (shutil.which("redis-server"), shutil.which("valkey-server"), server_binary()) if p)
    failures = []
    for binary in candidates:
        server = RedisServer(binary=binary, tls=tls)
        try:
            server.start()
        except RedisServerError as exc:
            server.close()
            failures.append(f"{binary}: {exc}")
            continue
        try:
            yield server
        finally:
            server.close()
        return
    _unavailable(f"no TLS-capable redis-server or valkey-server ({'; '.join(failures) or 'none on PATH'}); "
                 "install one: apt-get install redis-server")


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, retry=Retry(NoBackoff(), 0))


def test_the_roles_log_in_over_tls_and_the_server_is_verified(tls_redis: RedisServer) -> None:
    ingest_url, bridge_url = tls_redis.url_for("ingest"), tls_redis.url_for("bridge")
    assert ingest_url.startswith("rediss://ingest:") and "ssl_ca_certs=" in ingest_url
    ingest, bridge = _client(ingest_url), _client(bridge_url)
    pubsub = bridge.pubsub()
    try:
        pubsub.subscribe("md:book:BTC-USD")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        ingest.set("md:book:BTC-USD", b"{}")
        assert ingest.publish("md:book:BTC-USD", b"{}") == 1
        assert pubsub.get_message(timeout=5)["data"] == b"{}"  # type: ignore[index]
        assert bridge.get("md:book:BTC-USD") == b"{}"
        with pytest.raises(redis.exceptions.NoPermissionError):
            bridge.publish("md:book:BTC-USD", b"{}")
    finally:
        pubsub.close()
        ingest.close()
        bridge.close()
    bare = ingest_url.partition("?")[0]
    unverified = _client(bare)  # no CA: the server's certificate cannot be trusted
    plain = _client(bare.replace("rediss://", "redis://", 1))
    unchecked = _client(bare + "?ssl_cert_reqs=none")  # as the README says: no check at all
    try:
        with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
            unverified.ping()
        with pytest.raises(redis.ConnectionError):
            plain.ping()
        assert unchecked.ping()
    finally:
        for client in (unverified, plain, unchecked):
            client.close()


def test_an_ingestor_and_a_bridge_over_tls_deliver_a_book_to_a_websocket(tls_redis: RedisServer, sim: RunningSim, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    roles = [
        LoggedProcess(role, [sys.executable, "-m", "marketdata", role], tmp_path / f"{role}.log",
                      env={**env, **extra, "MD_REDIS_URL": tls_redis.url_for(role)})  # as up passes it: in the environment
        for role, extra in (("ingest", {"MD_SIM": sim.address}), ("bridge", {"MD_BRIDGE_PORT": str(port)}))
    ]

    def ready() -> bool:
        for proc in roles:
            assert proc.alive, f"{proc.name} exited:\n" + "\n".join(proc.tail())
            assert "no permissions" not in "\n".join(proc.tail()).lower(), "\n".join(proc.tail())
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", trust_env=False, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        for proc in roles:
            proc.start()
        wait_for(ready, timeout=30, interval=0.1, what="the bridge to be ready over rediss://")
        with connect(f"ws://127.0.0.1:{port}/ws/market_data/BTC-USD", proxy=None, open_timeout=5) as ws:
            def book() -> bytes | None:
                msg = ws.recv(timeout=10, decode=False)
                return msg if msg.startswith(b'{"v":1,"type":"book"') else None

            payload = wait_for(book, timeout=20, interval=0, what="a book on the WebSocket")
        assert schema.peek_seq(payload) > 0
    finally:
        for proc in reversed(roles):
            proc.stop()
