"""`marketdata up` as a user runs it: everything starts, books agree everywhere,
whatever ends it (Ctrl-C, SIGTERM, a closed terminal, a closed pipe, kill -9) leaves no
process and no port behind, and its Redis lets in only the users of the roles, whose
passwords appear nowhere but in the children's environments (inspect's in the banner)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as connect_sync

from marketdata import processes, schema
from marketdata.supervisor.ports import is_free
from marketdata.supervisor.redis_server import RedisServer
from tests.support import wait_for

pytestmark = pytest.mark.slow

GONE_TIMEOUT = 10.0  # seconds every child and port gets to disappear once `up` is told to stop


def _quiet_ports(n: int) -> int:
    """The first of `n` consecutive free ports below the ephemeral range.

    The OS hands out ephemeral ports for port 0 and outgoing connections, so on a busy
    machine one of them can be taken between the moment it is found free and the moment
    `up` binds it; nobody is handed a port below that range.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:
        low = 32768
    for _ in range(100):
        base = random.randrange(20000, low - n)
        if all(is_free(base + i) for i in range(n)):
            return base
    raise AssertionError(f"no {n} consecutive free ports between 20000 and {low}")


class Up:
    """A running `marketdata up` in a session of its own, as a terminal's foreground job.

    Its stdout (the banner) is a pipe read by a thread, so that a test can close it; its
    stderr (the log) goes to a file, or into the same pipe with `merged=True` (`up 2>&1 |
    tee`). Started like every child of the supervisor, it cannot outlive the test run.
    """

    def __init__(self, bridges: int, log_path: Path, merged: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.port = _quiet_ports(bridges)
        self.sim_port = _quiet_ports(1)
        self.log_path = log_path
        args = ["--bridges", str(bridges), "--port", str(self.port), "--sim-port", str(self.sim_port), "--rate", "50", *extra]
        with open(log_path, "wb") as log:
            self.proc = processes.spawn([sys.executable, "-m", "marketdata", "up", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else log)
        assert self.proc.stdout is not None
        self._stdout = self.proc.stdout
        self._chunks: list[bytes] = []
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        fd = self._stdout.fileno()
        while not self._closing.is_set():
            if select.select([fd], [], [], 0.05)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                self._chunks.append(chunk)

    @property
    def banner(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def output(self) -> str:
        return self.banner + self.log

    def banner_port(self, pattern: str) -> int:
        match = re.search(pattern, self.banner)
        assert match, f"no {pattern!r} in the banner:\n{self.banner}"
        return int(match.group(1))

    @property
    def redis_port(self) -> int:
        return self.banner_port(r"redis-cli -p (\d+) --user inspect subscribe")

    @property
    def inspect_url(self) -> str:
        """The read-only user's URL, from the banner's redis-cli line."""
        match = re.search(r"REDISCLI_AUTH=(\S+) redis-cli -p (\d+) --user inspect ", self.banner)
        assert match, f"no redis-cli line with the inspect user in the banner:\n{self.banner}"
        return f"redis://inspect:{match.group(1)}@127.0.0.1:{match.group(2)}/0"

    def close_stdout(self) -> None:
        """Close the reading end of its stdout, as `head -1` or a dying `tee` does."""
        if not self._closing.is_set():
            self._closing.set()
            self._reader.join(5)
            self._stdout.close()

    def stop(self) -> int:
        try:
            return processes.stop(self.proc, 20, signal.SIGINT)
        finally:
            self.close_stdout()


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """Start `marketdata up` (embedded Redis, free ports) and wait for its banner; stopped after the test."""
    started: list[Up] = []

    def start(bridges: int = 1, merged: bool = False, extra: tuple[str, ...] = ()) -> Up:
        running = Up(bridges, tmp_path / f"up-{len(started)}.log", merged, extra)
        started.append(running)
        wait_for(lambda: "Ctrl-C stops everything" in running.banner or running.proc.poll() is not None,
                 timeout=60, what="the `marketdata up` banner")
        assert running.proc.poll() is None, f"marketdata up exited early:\n{running.output}"
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def up(start_up: Callable[..., Up]) -> Up:
    return start_up(bridges=2)


def _role(process: psutil.Process) -> str:
    """'redis', 'sim', 'ingest' or 'bridge' for a child of `up`."""
    try:
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return "gone"  # ended since it was listed (a Redis node's own fork, say)
    if "marketdata" in cmdline:
        return cmdline[cmdline.index("marketdata") + 1]
    return "redis" if "server" in process.name() else process.name()


def _children(running: Up) -> dict[str, list[psutil.Process]]:
    """Every descendant of `up`, by role."""
    found: dict[str, list[psutil.Process]] = {}
    for child in psutil.Process(running.proc.pid).children(recursive=True):
        found.setdefault(_role(child), []).append(child)
    return found


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE  # a zombie holds nothing
    except psutil.NoSuchProcess:
        return True


def _assert_nothing_left(children: list[psutil.Process], ports: list[int]) -> None:
    try:
        wait_for(lambda: all(map(_gone, children)), timeout=GONE_TIMEOUT, what="the children of up to disappear")
    except AssertionError as exc:
        left = [p for p in children if not _gone(p)]
        names = [f"{_role(p)} (pid {p.pid})" for p in left]
        for p in left:  # the test failed: do not leave them to the next one
            p.kill()
        raise AssertionError(f"{exc}; left: {', '.join(names)}") from None
    for port in ports:
        wait_for(lambda port=port: is_free(port), timeout=GONE_TIMEOUT, what=f"port {port} to be released")


async def _collect(url: str, n: int, out: dict[int, bytes]) -> None:
    async with connect(url) as ws:
        while len(out) < n:
            msg = await asyncio.wait_for(ws.recv(decode=False), 10)
            if msg.startswith(b'{"v":1,"type":"book"'):
                out[schema.peek_seq(msg)] = msg


async def _collect_redis(url: str, channel: str, n: int, out: dict[int, bytes]) -> None:
    client = aioredis.Redis.from_url(url)
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        while len(out) < n:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10)
            if msg is not None:
                out[schema.peek_seq(msg["data"])] = msg["data"]
    await client.aclose()


def test_up_serves_the_same_books_everywhere_and_ctrl_c_leaves_nothing(up: Up) -> None:
    port, redis_port = up.port, up.redis_port
    assert f"http://localhost:{port}/" in up.banner and f"http://localhost:{port + 1}/" in up.banner
    children = [p for group in _children(up).values() for p in group]

    got: list[dict[int, bytes]] = [{}, {}, {}]

    async def gather() -> None:
        await asyncio.gather(
            _collect(f"ws://127.0.0.1:{port}/ws/market_data/BTC-USD", 30, got[0]),
            _collect(f"ws://127.0.0.1:{port + 1}/ws/market_data/BTC-USD", 30, got[1]),
            _collect_redis(up.inspect_url, "md:book:BTC-USD", 30, got[2]),
        )

    asyncio.run(asyncio.wait_for(gather(), 45))
    common = set(got[0]) & set(got[1]) & set(got[2])
    assert len(common) >= 10, f"too few seqs seen by both bridges and redis: {sorted(common)[:5]}"
    for seq in common:
        assert got[0][seq] == got[1][seq] == got[2][seq], f"payloads differ at seq {seq}"

    assert up.stop() == 0, up.output
    _assert_nothing_left(children, [port, port + 1, up.sim_port, redis_port])


def _first_book_then_close_code(port: int, end: Callable[[], None]) -> int | None:
    """Open a socket on the bridge, wait for a book, call `end`, and return the close code the
    bridge sent (None: closed without one, or still open after GONE_TIMEOUT)."""
    with connect_sync(f"ws://127.0.0.1:{port}/ws/market_data/BTC-USD", open_timeout=10) as ws:
        ws.recv(timeout=10)
        end()
        deadline = time.monotonic() + GONE_TIMEOUT
        try:
            while time.monotonic() < deadline:
                ws.recv(timeout=GONE_TIMEOUT)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None
        except TimeoutError:
            pass
        return None


ENDINGS = {
    "ctrl-c": lambda up: os.killpg(up.proc.pid, signal.SIGINT),  # the terminal signals its whole foreground group
    "sigterm": lambda up: up.proc.send_signal(signal.SIGTERM),
    "sighup": lambda up: os.killpg(up.proc.pid, signal.SIGHUP),  # the terminal was closed
    "stdout-closed": lambda up: up.close_stdout(),  # marketdata up | head -1
    "output-closed": lambda up: up.close_stdout(),  # marketdata up 2>&1 | tee log, and tee dies
    "kill-9": lambda up: up.proc.kill(),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_whatever_ends_up_no_child_and_no_port_is_left(start_up: Callable[..., Up], ending: str) -> None:
    up = start_up(bridges=1, merged=ending == "output-closed")
    roles = _children(up)
    counts = {role: len(group) for role, group in roles.items()}
    assert counts == {"bridge": 1, "ingest": 2, "redis": 1, "sim": 1}, roles  # two ingestors: a leader and a standby
    children = [child for group in roles.values() for child in group]
    for child in children:  # so that a Ctrl-C reaches only up, which stops them in order
        assert os.getpgid(child.pid) not in (os.getpgid(up.proc.pid), os.getpgid(0)), f"{_role(child)} shares a process group"
    ports = [up.port, up.sim_port, up.redis_port]

    code = _first_book_then_close_code(up.port, lambda: ENDINGS[ending](up))
    try:
        exit_code = up.proc.wait(GONE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"up still runs {GONE_TIMEOUT:.0f} s after {ending}:\n{up.output}") from None
    _assert_nothing_left(children, ports)
    if ending == "kill-9":
        assert exit_code == -signal.SIGKILL
        return
    assert exit_code == 0, up.output
    assert code == 1001, f"the bridge closed its socket with {code}, not 1001 (going away)"
    if ending != "output-closed":  # the log went into the closed pipe
        log = up.log
        steps = [log.find(f"{name} stopped") for name in ("bridge-1", "ingest-2", "ingest-1", "sim", "redis")]
        assert -1 not in steps and steps == sorted(steps), f"not stopped in order (bridges, ingest, sim, redis):\n{log}"
        assert "did not stop within" not in log, log


@pytest.mark.parametrize("flag", ["--port", "--sim-port"])
def test_up_refuses_a_held_port_in_one_line_naming_its_holder(redis_server: RedisServer, flag: str) -> None:
    ports = {"--port": str(_quiet_ports(1)), "--sim-port": str(_quiet_ports(1)), flag: str(redis_server.port)}
    proc = subprocess.run(
        [sys.executable, "-m", "marketdata", "up", "--bridges", "1", *[x for kv in ports.items() for x in kv]],
        capture_output=True, text=True, timeout=60, check=False,
    )
    name = Path(redis_server.binary).name[:15]  # what /proc/PID/comm keeps of it
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1, "", f"marketdata up: port {redis_server.port} is in use by pid {redis_server.pid} ({name}); stop it or pass {flag}\n"
    )


def test_up_restarts_a_child_that_dies(up: Up) -> None:
    victim = _children(up)["sim"][0]
    victim.kill()
    wait_for(lambda: "sim exited with code" in up.output, timeout=15, what="the supervisor to notice")
    wait_for(lambda: [p for p in _children(up).get("sim", []) if p.pid != victim.pid],
             timeout=20, what="a new simulator process")


def _cli_line(banner: str) -> tuple[dict[str, str], list[str]]:
    """The banner's first inspect line whose redis-cli (or valkey-cli) exists here, else the
    first: its environment assignment and its argv."""
    found = re.findall(r"REDISCLI_AUTH=(\S+) (\S+) (-p \d+ --user inspect subscribe [^\s)]+)", banner)
    assert found, f"no redis-cli line with the inspect user in the banner:\n{banner}"
    password, cli, args = next((line for line in found if shutil.which(line[1])), found[0])
    return {"REDISCLI_AUTH": password}, [cli, *args.split()]


def _first_book_through(env: dict[str, str], argv: list[str]) -> str:
    """Run the banner's redis-cli command until it prints a book; what it printed.

    Without a redis-cli here, redis-py does what the line says: `--user inspect`, the
    password of REDISCLI_AUTH, `subscribe CHANNEL` on port `-p`.
    """
    if shutil.which(argv[0]) is None:
        port, channel = int(argv[argv.index("-p") + 1]), argv[-1]
        client = redis.Redis(port=port, username=argv[argv.index("--user") + 1], password=env["REDISCLI_AUTH"])
        with client, client.pubsub() as pubsub:
            pubsub.subscribe(channel)
            got = wait_for(lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1), timeout=20, interval=0,
                           what=f"a book on {channel} as the banner's user")
        return got["data"].decode()
    with subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **processes.child_options()) as cli:
        try:
            seen: list[str] = []

            def book() -> bool:
                assert cli.stdout is not None and cli.poll() is None, f"{argv[0]} exited: {''.join(seen)}"
                if select.select([cli.stdout], [], [], 0.1)[0]:
                    seen.append(cli.stdout.readline())
                return seen[-1].startswith('{"v":1,"type":"book"') if seen else False

            wait_for(book, timeout=20, interval=0, what=f"a book printed by {shlex.join(argv)}")
            return "".join(seen)
        finally:
            processes.stop(cli, 5)


def _refused(attempt: Callable[[], object]) -> bool:
    try:
        attempt()
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError):
        return True
    return False


def test_up_lets_in_only_the_users_of_the_roles_and_shows_no_password_but_inspects(start_up: Callable[..., Up]) -> None:
    up = start_up(bridges=1, extra=("--log-level", "debug"))  # every line that could name a URL
    roles = _children(up)
    env_urls = {role: roles[role][0].environ().get("MD_REDIS_URL", "") for role in ("ingest", "bridge")}
    passwords = {role: redis.connection.parse_url(url).get("password", "") for role, url in env_urls.items()}
    assert env_urls["ingest"].startswith("redis://ingest:") and env_urls["bridge"].startswith("redis://bridge:"), env_urls
    assert all(len(p) >= 16 for p in passwords.values()), "generated passwords are long"
    assert "MD_REDIS_URL" not in roles["sim"][0].environ(), "the simulator needs no Redis login"

    nobody = redis.Redis(port=up.redis_port, protocol=2, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        assert _refused(lambda: nobody.publish("md:book:BTC-USD", b"{}")), "PUBLISH without a login"
        pubsub = nobody.pubsub()
        assert _refused(lambda: (pubsub.subscribe("md:book:BTC-USD"), pubsub.get_message(timeout=5))), "SUBSCRIBE without a login"
        pubsub.close()
    finally:
        nobody.close()

    env, argv = _cli_line(up.banner)
    printed = _first_book_through(env, argv)
    assert "Warning" not in printed, printed  # REDISCLI_AUTH: no password on redis-cli's command line either
    inspect_password = env["REDISCLI_AUTH"]

    for child in [p for group in roles.values() for p in group]:
        cmdline = " ".join(child.cmdline())
        assert inspect_password not in cmdline and not any(p in cmdline for p in passwords.values()), f"a password in argv: {cmdline}"
        assert not re.search(r"rediss?://[^ ]*:[^ ]*@", cmdline), f"a URL with credentials in argv: {cmdline}"
    assert up.stop() == 0
    output = up.output
    for role, password in passwords.items():
        assert password not in output, f"the {role} password is in up's output"
    shown = [line for line in output.splitlines() if inspect_password in line]
    assert len(shown) in (1, 2) and all("--user inspect subscribe" in line for line in shown), shown
    assert not re.search(r"rediss?://\w*:(?!\*\*\*@)[^@\s]+@", output), "a URL with a password in up's output"


def test_up_hands_an_external_redis_url_to_every_role_in_the_environment(start_up: Callable[..., Up], private_redis: RedisServer) -> None:
    url = private_redis.url
    up = start_up(bridges=1, extra=("--redis-url", url))
    roles = _children(up)
    assert "redis" not in roles, "no embedded Redis with --redis-url"
    for role in ("ingest", "bridge"):
        child = roles[role][0]
        assert child.environ()["MD_REDIS_URL"] == url and url not in " ".join(child.cmdline())
    inspect = redis.Redis.from_url(private_redis.url_for("inspect"))
    try:
        wait_for(lambda: inspect.get("md:book:BTC-USD"), timeout=20, what="a book in the external Redis")
    finally:
        inspect.close()
    assert private_redis.password("admin") not in up.output and "admin:***@" in up.banner
