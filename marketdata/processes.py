"""Child processes that never outlive their parent: spawn, stop, and wait with a deadline.

Every child starts in a session, hence a process group, of its own: a Ctrl-C in the
terminal reaches only the parent, which stops its children in the order it chooses,
and stopping a child reaches whatever the child started in its group. On Linux the
child also asks the kernel for SIGKILL the moment its parent dies
(`prctl(PR_SET_PDEATHSIG)`), so not even `kill -9` of the parent leaves it running.
The kernel sends that signal when the *thread* that forked the child ends, not the
process, so it is armed only for children the main thread spawns (run an asyncio loop
that spawns on the main thread, as `asyncio.run` does); a child spawned from another
thread only leads its own session.

macOS and the other systems have no parent-death signal. A parent that stops its
children before it exits (`up` does, on every signal it can catch and on a closed
output pipe: SIGTERM to each child's process group) leaves nothing behind, but one
killed with SIGKILL leaves them running, each in its own process group (`kill -- -PID`
stops one together with anything it started).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from marketdata.errors import MarketDataError

log = logging.getLogger(__name__)

T = TypeVar("T")
Stream = int | IO[Any] | None  # what subprocess accepts for stdout and stderr

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
PARENT_DEATH_SIGNAL = signal.SIGKILL  # cannot be caught, so it cannot be lost between fork and exec
POLL_INTERVAL = 0.05
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class ProcessError(MarketDataError):
    """A child exited, or did not get ready, while someone waited for it."""


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the parent (after fork the child only calls it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def _die_with(parent: int, prctl: Callable[..., int]) -> Callable[[], None]:
    def in_child() -> None:
        # Between fork and exec: no imports, no locks, no logging.
        if prctl(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the signal was armed: nobody will send it
            os._exit(1)

    return in_child


def child_options() -> dict[str, Any]:
    """Keyword arguments for subprocess.Popen or asyncio.create_subprocess_exec that make a
    child lead its own session and, on Linux, die with this process.

    The parent-death signal is armed only when the main thread forks: from any other thread
    it would fire when that thread ends (an executor's worker, say), not this process.
    """
    options: dict[str, Any] = {"start_new_session": True}
    prctl = _prctl()
    if prctl is not None and threading.current_thread() is threading.main_thread():
        options["preexec_fn"] = _die_with(os.getpid(), prctl)
    return options


def spawn(
    argv: Sequence[str],
    *,
    stdout: Stream = subprocess.DEVNULL,
    stderr: Stream = subprocess.STDOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` as a child that never outlives this process; stdin is /dev/null."""
    return subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, cwd=cwd, **child_options()
    )


async def spawn_async(
    argv: Sequence[str],
    *,
    stdout: Stream = subprocess.DEVNULL,
    stderr: Stream = subprocess.STDOUT,
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """The asyncio twin of spawn (the loop's thread forks: run the loop on a long-lived thread)."""
    return await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, **child_options()
    )


def _signal_group(pid: int, sig: int) -> None:
    # Called only while the child is unreaped, so its pid cannot name anybody else's group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop(proc: subprocess.Popen[Any], grace: float = STOP_GRACE, sig: int = signal.SIGTERM) -> int:
    """Send `sig` to the child's process group, then SIGKILL after `grace` seconds; its exit code."""
    if proc.poll() is None:
        _signal_group(proc.pid, sig)
        if sig != signal.SIGKILL:
            try:
                return proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop within %.1f s of signal %d; killing it", proc.pid, grace, sig)
                _signal_group(proc.pid, signal.SIGKILL)
    return proc.wait()


async def stop_async(proc: asyncio.subprocess.Process, grace: float = STOP_GRACE, sig: int = signal.SIGTERM) -> int:
    """The asyncio twin of stop."""
    if proc.returncode is None:
        _signal_group(proc.pid, sig)
        if sig != signal.SIGKILL:
            try:
                return await asyncio.wait_for(proc.wait(), grace)
            except asyncio.TimeoutError:
                log.warning("pid %d did not stop within %.1f s of signal %d; killing it", proc.pid, grace, sig)
                if proc.returncode is None:
                    _signal_group(proc.pid, signal.SIGKILL)
    return await proc.wait()


def _give_up_if(deadline: float, timeout: float, what: str, check: Callable[[], str | None] | None) -> None:
    """ProcessError when `check` gives a reason to stop waiting, or when the deadline has passed."""
    reason = check() if check is not None else None
    if reason:
        raise ProcessError(f"{reason} while waiting for {what}")
    if time.monotonic() > deadline:
        raise ProcessError(f"timed out after {timeout:.1f} s waiting for {what}")


def wait_until(
    ready: Callable[[], T],
    timeout: float,
    what: str,
    *,
    check: Callable[[], str | None] | None = None,
    interval: float = POLL_INTERVAL,
) -> T:
    """Poll `ready` until it returns something truthy, and return that.

    ProcessError after `timeout` seconds, or as soon as `check` returns a reason to give up
    (for example "bridge exited with code 1").
    """
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        _give_up_if(deadline, timeout, what, check)
        time.sleep(interval)


async def wait_until_async(
    ready: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    check: Callable[[], str | None] | None = None,
    interval: float = POLL_INTERVAL,
) -> Any:
    """The asyncio twin of wait_until; `ready` may return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        _give_up_if(deadline, timeout, what, check)
        await asyncio.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _exit_reason(name: str, proc: subprocess.Popen[Any] | None) -> str | None:
    if proc is None:
        return f"{name} is not running"
    code = proc.poll()
    return None if code is None else f"{name} exited with code {code}"


@dataclass(slots=True)
class LoggedProcess:
    """One child whose output (stdout and stderr) is appended to a log file.

    It never outlives this process (see the module docstring); stop() sends SIGTERM to its
    process group and SIGKILL after a grace period.
    """

    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> LoggedProcess:
        with open(self.log_path, "ab") as out:
            self.proc = spawn(self.argv, stdout=out, env=self.env, cwd=self.cwd)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_reason(self) -> str | None:
        """Why waiting on this child is pointless ("sim exited with code 1"), or None while it runs."""
        return _exit_reason(self.name, self.proc)

    def stop(self, grace: float = STOP_GRACE, sig: int = signal.SIGTERM) -> int | None:
        """Stop it (see the class docstring); its exit code, None if it was not started."""
        proc, self.proc = self.proc, None
        return None if proc is None else stop(proc, grace, sig)

    def kill(self) -> None:
        """Die abruptly, as a crashed process would (no goodbyes)."""
        self.stop(0, signal.SIGKILL)

    def wait_until(self, ready: Callable[[], T], timeout: float, what: str) -> T:
        """wait_until that gives up as soon as this child exits."""
        return wait_until(ready, timeout, what, check=self.exit_reason)

    def wait_port(self, port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
        self.wait_until(lambda: port_open(port, host), timeout, f"{self.name} to listen on port {port}")

    def tail(self, lines: int = 30) -> list[str]:
        """The last lines of its log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]
