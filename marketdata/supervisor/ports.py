"""TCP ports on this machine: a free one for a server that must be told its port up front,
whether one is free, and which process holds one that is not."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # socket states in /proc/net/tcp, from include/net/tcp_states.h


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on `port` now (closed connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class PortOwner:
    pid: int
    name: str


def socket_inodes(table: str, port: int) -> list[int]:
    """Inodes of the sockets bound to local `port` in a /proc/net/tcp{,6} table, listeners first.

    Sockets in TIME_WAIT carry inode 0 and are left out: they belong to nobody.
    """
    found: list[tuple[bool, int]] = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, state, inode = fields[1], fields[3], int(fields[9])
        if inode and int(local.rsplit(":", 1)[1], 16) == port:
            found.append((state != _LISTEN, inode))
    return [inode for _, inode in sorted(found)]


def port_owner(port: int, proc: Path = Path("/proc")) -> PortOwner | None:
    """The process holding TCP `port`, found through /proc (Linux); None when it cannot be
    told (another system, or a process of another user whose descriptors we may not read)."""
    inodes: list[int] = []
    for table in ("tcp", "tcp6"):
        try:
            inodes += socket_inodes((proc / "net" / table).read_text(), port)
        except OSError:
            continue
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]": rank for rank, inode in enumerate(inodes)}
    best: tuple[int, int] | None = None  # (rank of its socket, pid)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                rank = wanted.get(os.readlink(fd))
            except OSError:  # closed meanwhile
                continue
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, int(entry.name))
    if best is None:
        return None
    try:
        name = (proc / str(best[1]) / "comm").read_text().strip()
    except OSError:
        name = "?"
    return PortOwner(best[1], name)


def describe_holder(port: int) -> str:
    """'in use by pid 1234 (valkey-server)', or 'in use by another process' when it cannot be told."""
    owner = port_owner(port)
    return "in use by another process" if owner is None else f"in use by pid {owner.pid} ({owner.name})"
