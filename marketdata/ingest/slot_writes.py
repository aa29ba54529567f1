"""What a drain writes on Redis Cluster: one fenced script per slot, so that each runs on the node that owns it.

Pure code, the cluster form of `publish_queue.drain_commands`. A script may touch
the keys of one slot only, and each instrument's book key, delta channel and trades
list share a slot (the instrument id is their hash tag, marketdata.schema.Keys), so
the drain's writes are grouped by slot (marketdata.slots.key_slot): one script per
slot writes its books (with their deltas) and trades, and the instrument list, in a
slot of its own, gets a script of its own. Each starts with the lease's
`CLUSTER_FENCE` on the fence key of its slot (`Keys.fence(slot)`), so a writer whose
lease token is older than the newest lease that wrote there writes nothing. Channels
are sharded (SPUBLISH): a message goes only to the node that owns its slot, so the
bus scales with the shards instead of every message crossing every node.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from marketdata import schema
from marketdata.ingest.lease import CLUSTER_FENCE, Command
from marketdata.slots import key_slot

if TYPE_CHECKING:
    from marketdata.ingest.publish_queue import Drain

# KEYS: fence, the instrument list; ARGV: lease value, the list.
INSTRUMENTS_LUA = CLUSTER_FENCE + b"""
redis.call('SET', KEYS[2], ARGV[2])
return 0
"""
# KEYS: fence, the slot's n book keys (in the drain's order), then its trades lists.
# ARGV: lease value, n, history, then per book its snapshot, delta channel and delta ('':
# none), then per trades list its count and its trades, oldest first. As on one server, a
# delta goes out just before its snapshot, and a trades list keeps the newest `history`,
# newest first. Answers {books, deltas, trades} published.
# For a few seconds after a takeover (lease.CLUSTER_FENCE marks the slot) a book older
# than the one the key holds in the same epoch is not written: the old leader, publishing
# until the fence stopped it, may be ahead of the new one, and the bus never goes back
# (the new leader's books catch up; a bridge resyncs a delta that does not chain).
SLOT_LUA = CLUSTER_FENCE + b"""
local n, keep, a, books, deltas, trades = tonumber(ARGV[2]), tonumber(ARGV[3]), 4, 0, 0, 0
local takeover = redis.call('GET', KEYS[1] .. ':takeover') ~= false
for i = 2, n + 1 do
  local behind = false
  if takeover then
    local old = redis.call('GET', KEYS[i])
    if old and string.match(old, '"epoch":(%d+)') == string.match(ARGV[a], '"epoch":(%d+)') then
      behind = tonumber(string.match(old, '"seq":(%d+)') or '0') > tonumber(string.match(ARGV[a], '"seq":(%d+)') or '0')
    end
  end
  if not behind then
    redis.call('SET', KEYS[i], ARGV[a])
    if ARGV[a + 2] ~= '' then
      redis.call('SPUBLISH', ARGV[a + 1], ARGV[a + 2])
      deltas = deltas + 1
    end
    redis.call('SPUBLISH', KEYS[i], ARGV[a])
    books = books + 1
  end
  a = a + 3
end
for i = n + 2, #KEYS do
  local last = a + tonumber(ARGV[a])
  for j = a + 1, last do redis.call('SPUBLISH', KEYS[i], ARGV[j]) end
  for j = math.max(a + 1, last - keep + 1), last do redis.call('LPUSH', KEYS[i], ARGV[j]) end
  redis.call('LTRIM', KEYS[i], 0, keep - 1)
  trades = trades + last - a
  a = last + 1
end
return {books, deltas, trades}
"""


@lru_cache(maxsize=65536)
def slot_of(key: bytes) -> int:
    """The slot of a key or channel (cached: the same few thousand names come back every drain)."""
    return key_slot(key)


@lru_cache(maxsize=65536)
def fence_key(prefix: str, slot: int) -> bytes:
    return schema.Keys(prefix, cluster=True).fence(slot).encode()


class _Slot:
    """One slot's share of a drain, in the drain's order."""

    __slots__ = ("book_args", "book_keys", "trade_args", "trade_keys")

    def __init__(self) -> None:
        self.book_keys: list[bytes] = []
        self.book_args: list[bytes] = []
        self.trade_keys: list[bytes] = []
        self.trade_args: list[bytes] = []


def slot_commands(drain: Drain, prefix: str, history: int, value: bytes) -> list[Command]:
    """The drain as one fenced EVAL per slot it writes (the instrument list first, when due).

    `prefix` is the key prefix (the fence keys live under it), `value` the writer's
    lease value. Books keep the drain's order within each slot, so within each
    instrument; so do trades. Every command's keys map to one slot, KEYS[1] its fence.
    """
    commands: list[Command] = []
    if drain.instruments is not None:
        key = schema.Keys(prefix, cluster=True).instruments.encode()
        commands.append((b"EVAL", INSTRUMENTS_LUA, b"2", fence_key(prefix, slot_of(key)), key, value, drain.instruments))
    slots: dict[int, _Slot] = {}
    deltas = drain.deltas or [None] * len(drain.books)
    for (key, snapshot), delta in zip(drain.books, deltas):
        slot = slot_of(key)
        group = slots.get(slot)
        if group is None:
            group = slots[slot] = _Slot()
        group.book_keys.append(key)
        group.book_args += (snapshot, delta[0], delta[1]) if delta else (snapshot, b"", b"")
    for key, payloads in drain.trades.items():
        slot = slot_of(key)
        group = slots.get(slot)
        if group is None:
            group = slots[slot] = _Slot()
        group.trade_keys.append(key)
        group.trade_args += (b"%d" % len(payloads), *payloads)
    keep = b"%d" % history
    for slot, group in slots.items():
        keys = (fence_key(prefix, slot), *group.book_keys, *group.trade_keys)
        commands.append(
            (b"EVAL", SLOT_LUA, b"%d" % len(keys), *keys, value, b"%d" % len(group.book_keys), keep, *group.book_args, *group.trade_args)
        )
    return commands


def slot_published(result: object) -> tuple[int, int, int]:
    """(books, deltas, trades) a slot script answered it published."""
    books, deltas, trades = result  # type: ignore[misc]
    return int(books), int(deltas), int(trades)
