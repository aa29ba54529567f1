"""Redis Cluster's key slots, computed here: which slot a name hashes to, and a fence key per slot.

Pure. Redis Cluster hashes each key (and each sharded channel) to one of 16384 slots
with CRC16 (XMODEM) of its hash tag: the part between the first `{` and the next `}`
when that part is not empty, else the whole name. Every key a script touches must
hash to one slot, so the ingestor groups each drain's writes by slot
(marketdata.ingest.publish_queue) and each group's script is fenced by that slot's
fence key, `{prefix}:fence:{TAG}`, where TAG is the shortest base-36 string that
hashes to the slot (the same for every ingestor, whatever instruments it carries).
`node_url` names one node of a cluster with the credentials and options of the URL a
role was given for the cluster (the ingestor's and the bridge's per-node connections).
"""

from __future__ import annotations

from binascii import crc_hqx
from urllib.parse import urlsplit, urlunsplit

SLOTS = 16384
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_tags: list[str] | None = None


def key_slot(name: bytes | str) -> int:
    """The cluster slot of a key or sharded channel name, as Redis computes it."""
    key = name.encode() if isinstance(name, str) else name
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) % SLOTS


def _base36(n: int) -> str:
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = _DIGITS[d] + out
        if n == 0:
            return out


def slot_tag(slot: int) -> str:
    """The shortest base-36 string (shortest, then first in counting order) whose slot is `slot`."""
    global _tags
    if _tags is None:
        tags: list[str | None] = [None] * SLOTS
        left, n = SLOTS, 0
        while left:  # about 170,000 CRCs, some 50 ms, once per process
            tag = _base36(n)
            slot_of = crc_hqx(tag.encode(), 0) % SLOTS
            if tags[slot_of] is None:
                tags[slot_of] = tag
                left -= 1
            n += 1
        _tags = tags  # type: ignore[assignment]
    assert _tags is not None
    return _tags[slot]


def node_url(url: str, host: str, port: int) -> str:
    """`url` (credentials, scheme and options: TLS) naming the node at host:port instead."""
    parts = urlsplit(url)
    user, at, _ = parts.netloc.rpartition("@")
    netloc = f"{user}{at}[{host}]:{port}" if ":" in host else f"{user}{at}{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))
