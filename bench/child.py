"""The feed of a gRPC benchmark in a child process, and the CPU any process has used.

`grpc_server` starts a simulator (or a stand-in for one) as its own process, so the
two cores are shared as in production, waits until its gRPC port answers, and stops
it with SIGINT (then SIGKILL) however the measurement ends; like every child we start,
it dies with its parent (marketdata.processes). `cpu_seconds` reads a
process's CPU time from /proc (Linux), so a run can say which side was saturated.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc

from marketdata.processes import spawn, stop

ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def grpc_server(args: list[str], port: int, stop_timeout: float) -> Iterator[tuple[str, int]]:
    """Run `python ARGS` (serving gRPC on `port`) from the repository; yield its address and pid once it answers."""
    proc = spawn([sys.executable, *args], cwd=ROOT, stdout=None, stderr=None)
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=120)
        yield address, proc.pid
    finally:
        stop(proc, grace=stop_timeout, sig=signal.SIGINT)


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds so far of process `pid`, or of its thread `thread` (Linux /proc)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK
