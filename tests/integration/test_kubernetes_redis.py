"""The Redis of deploy/kubernetes, run for real: its ACL file, its arguments, its probe.

The init container's script writes the ACL file from passwords in the environment; the
server starts with the StatefulSet's own arguments (paths and port moved to a temporary
folder, bound to loopback) from the project's Valkey binary. Today's ingestor and bridge
then run as the `ingest` and `bridge` users, credentials in MD_REDIS_URL as the manifests
pass them, and a book must reach the bridge; every user is refused what it must not do.
docker-compose.yml's redis service runs the same script: its command and healthcheck run
here too.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from marketdata.processes import LoggedProcess
from marketdata.supervisor import acl
from marketdata.supervisor.ports import free_port
from marketdata.supervisor.redis_server import server_binary
from tests.conftest import RunningSim
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
USERS = ("ingest", "bridge", "inspect")


def _statefulset() -> dict:
    return next(d for d in yaml.safe_load_all((K8S / "redis.yaml").read_text()) if d and d["kind"] == "StatefulSet")


def _args(args: list[str], port: int, folder: Path) -> list[str]:
    """The container's arguments with its port, interfaces and paths moved here."""
    out: list[str] = []
    skipping = False
    for arg in args:
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        if out and out[-1] == "--port":
            arg = str(port)
        elif arg == "--bind":
            out += ["--bind", "127.0.0.1"]
            skipping = True
            continue
        out.append(arg.replace("/acl/", f"{folder}/acl/").replace("/data", f"{folder}/data") if arg.startswith("/") else arg)
    return out


@dataclass
class AclRedis:
    port: int
    passwords: dict[str, str]
    acl_file: Path

    def url(self, user: str) -> str:
        return f"redis://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"

    def client(self, user: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(user), socket_timeout=5)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    (tmp_path / "acl").mkdir()
    (tmp_path / "data").mkdir()
    passwords = {user: secrets.token_hex(16) for user in USERS}
    env = {**os.environ, **{f"REDIS_{u.upper()}_PASSWORD": p for u, p in passwords.items()}}
    init = _statefulset()["spec"]["template"]["spec"]["initContainers"][0]
    script = [str(K8S / Path(a).name) if a.startswith("/scripts/") else a.replace("/acl/", f"{tmp_path}/acl/") for a in init["command"]]
    done = subprocess.run(script, check=False, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    (container,) = _statefulset()["spec"]["template"]["spec"]["containers"]
    port = free_port()
    args = _args(container["args"], port, tmp_path)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([server_binary(), *args], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = AclRedis(port, passwords, tmp_path / "acl" / "users.acl")
    try:
        wait_for(lambda: proc.poll() is not None or _answers(server), timeout=10, what="the ACL'd server to answer")
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        yield server
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _answers(server: AclRedis) -> bool:
    try:
        return bool(server.client("inspect").ping())
    except redis.ConnectionError:
        return False


def test_the_acl_file_holds_hashes_and_turns_the_default_user_off(acl_redis: AclRedis) -> None:
    text = acl_redis.acl_file.read_text()
    assert not any(p in text for p in acl_redis.passwords.values()), "a cleartext password in the ACL file"
    assert text.splitlines()[0].startswith("user default off")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis.port, retry=Retry(NoBackoff(), 0)).ping()  # no retries: a refusal is final
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(acl_redis.url("bridge").replace(acl_redis.passwords["bridge"], "wrong"), retry=Retry(NoBackoff(), 0)).ping()


def test_each_user_is_refused_what_it_must_not_do(acl_redis: AclRedis) -> None:
    ingest, bridge, inspect = (acl_redis.client(u) for u in USERS)
    ingest.set("md:book:BTC-USD", b"{}")
    assert bridge.get("md:book:BTC-USD") == inspect.get("md:book:BTC-USD") == b"{}"
    refused = {
        "ingest SET outside the prefix": lambda: ingest.set("other:key", b"x"),
        "ingest PUBLISH outside the prefix": lambda: ingest.publish("other:channel", b"x"),
        "ingest FLUSHALL": lambda: ingest.flushall(),
        "ingest CONFIG GET": lambda: ingest.config_get("maxmemory"),
        "bridge SET": lambda: bridge.set("md:book:BTC-USD", b"x"),
        "bridge PUBLISH": lambda: bridge.publish("md:book:BTC-USD", b"x"),
        "bridge GET outside the prefix": lambda: bridge.get("other:key"),
        "inspect SET": lambda: inspect.set("md:book:BTC-USD", b"x"),
        "inspect KEYS": lambda: inspect.keys("*"),
    }
    allowed = []
    for what, attempt in refused.items():
        try:
            attempt()
        except redis.exceptions.NoPermissionError:
            continue
        allowed.append(what)
    assert allowed == []


def test_the_readiness_probe_needs_the_inspect_password(acl_redis: AclRedis) -> None:
    (container,) = _statefulset()["spec"]["template"]["spec"]["containers"]
    probe = container["readinessProbe"]["exec"]["command"]
    cli = str(Path(server_binary()).with_name("valkey-cli"))
    if not Path(cli).is_file():
        pytest.skip(f"no valkey-cli beside {server_binary()}")
    command = [*probe[:-1], probe[-1].replace("valkey-cli", f"{cli} -p {acl_redis.port}", 1)]
    for password, code in ((acl_redis.passwords["inspect"], 0), ("wrong", 1)):
        done = subprocess.run(command, check=False, env={**os.environ, "REDISCLI_AUTH": password}, capture_output=True, timeout=30)
        assert done.returncode == code, (password, done)


def test_the_ingestor_and_the_bridge_work_within_their_users(acl_redis: AclRedis, sim: RunningSim, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD_")}
    port = free_port()
    procs = []
    for role, extra in (("ingest", {"MD_SIM": sim.address}), ("bridge", {"MD_BRIDGE_PORT": str(port)})):
        # credentials in the environment only, as the manifests pass them
        role_env = {**env, **extra, "MD_REDIS_URL": acl_redis.url(role)}
        log = (tmp_path / f"{role}.log").open("wb")
        command = [sys.executable, "-m", "marketdata", role]
        procs.append((subprocess.Popen(command, env=role_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT), log))

    def book() -> bool:
        for proc, log in procs:
            text = Path(log.name).read_text()
            assert proc.poll() is None and "no permissions" not in text.lower() and "NOPERM" not in text, text
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/book/BTC-USD", trust_env=False, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(book, timeout=30, interval=0.1, what="a book published as `ingest` to be served by a bridge logged in as `bridge`")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", trust_env=False, timeout=2).status_code == 200
    finally:
        for proc, log in procs:
            proc.terminate()
            proc.wait(10)
            log.close()


def _cli() -> str:
    cli = Path(server_binary()).with_name("valkey-cli")
    if not cli.is_file():
        pytest.skip(f"no valkey-cli beside {server_binary()}")
    return str(cli)


def test_the_compose_redis_service_starts_with_the_users_and_its_healthcheck_logs_in(tmp_path: Path) -> None:
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    passwords = {f"REDIS_{u.upper()}_PASSWORD": secrets.token_hex(16) for u in USERS}
    # compose's own interpolation, of the variables .env sets
    env = {k: re.sub(r"\$\{(\w+)[^}]*\}", lambda m: passwords[m.group(1)], v) for k, v in service["environment"].items()}
    script_path = next(v.split(":")[1] for v in service["volumes"] if "redis-acl.sh" in v)
    sh, dash_c, command = service["entrypoint"]
    port = free_port()
    # /tmp/ before the script's path goes in: the checkout itself may live under /tmp (a fresh clone)
    command = (command.replace("/tmp/", f"{tmp_path}/").replace(script_path, str(K8S / "redis-acl.sh"))
               .replace("exec valkey-server", f"exec {server_binary()} --port {port} --bind 127.0.0.1 --dir {tmp_path}"))
    server = LoggedProcess("compose redis", [sh, dash_c, command], tmp_path / "redis.log", env={**os.environ, **env})
    users = AclRedis(port, {u: passwords[f"REDIS_{u.upper()}_PASSWORD"] for u in USERS}, tmp_path / "users.acl")
    try:
        server.start()
        server.wait_until(lambda: _answers(users), 10, "the compose redis to answer the inspect user")
        assert users.acl_file.read_text().splitlines() == acl.acl_lines(users.passwords)
        nobody = redis.Redis(port=port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            nobody.ping()
        nobody.close()
        kind, check = service["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        check = check.replace("valkey-cli", f"{_cli()} -p {port}", 1)
        for password, code in ((env["REDISCLI_AUTH"], 0), ("wrong", 1)):
            done = subprocess.run(["sh", "-c", check], check=False, env={**os.environ, "REDISCLI_AUTH": password}, capture_output=True, timeout=30)
            assert done.returncode == code, (password == "wrong", done)
    finally:
        server.stop()
