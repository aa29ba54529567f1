"""The publishing lease: which one of several ingestors writes to Redis, and the fence on every write.

Pure code (no Redis connection, no clock: times are handed in). Any number of
ingestors read the simulator; the one whose value sits in the lease key
(`{prefix}:leader`, set with NX and a TTL of one lease period) publishes. The value is
`TOKEN HOLDER`: a fencing token that grows by one at each acquisition
(`{prefix}:leader:token`) and the holder's name, unique per process. Every script the
ingestor runs starts with `FENCE`, which compares the lease key with the writer's value
and refuses the whole script (error `FENCED <current value or ->`) when they differ, so
a leader that was paused past its lease writes nothing when it wakes, whatever its own
clock believes.

On Redis Cluster a script may touch the keys of one slot only, so a write there cannot
read the lease: its scripts start with `CLUSTER_FENCE` instead, which reads the fence
key of the slot it writes (`Keys.fence(slot)`): the lease value of the newest lease
that wrote to that slot. A writer whose token is lower is refused the same way
(`FENCED <fence value>`); a higher one raises the fence to its own value and writes.
A new leader republishes every book at once, which raises the fence of every slot in
use, so a paused ex-leader is refused everywhere right after. The lease scripts below
run unchanged: the lease, its token and the heartbeat share the `{leader}` slot. While
that slot's primary fails over nobody can renew or take the lease, so there the
ingestor does not give up a lease it cannot reach (`unreachable`): the leader publishes
on to the other shards, and the fences, not the lease's TTL, keep a stale one out.

`Lease` is one ingestor's view: the shell asks it what to do next (`step`), runs the
matching command, and reports the answer back; each report may return a line to log
when the role changes. The timing, for a lease period P (default 1 s):

- the leader renews every P/3, so two renewals may fail before the key expires;
- a standby tries to take the lease every P/4 while its own simulator stream is live,
  or sooner: just after the lease's remaining TTL, which a refused bid reports;
- a leader killed with -9 is replaced within P plus a round trip (the key expires at
  most P after the last renewal, a standby bids again right after), and the new
  leader publishes every book at once: with P = 1 s fresh books are out in about
  1 s, well within the 2 s we promise. A shorter P would fail over faster but would
  make a leader whose event loop stalls for 2P/3 lose the lease; 1 s tolerates
  stalls of about 0.6 s;
- a leader stopped with SIGTERM deletes the key (only if it is still its own), so a
  standby takes over within P/4;
- a leader whose simulator stream has been down for a whole period releases the
  lease, so a standby with a live stream can publish instead.

The renewal also refreshes the heartbeat key while the stream is live: a fresh
heartbeat means a live leader holds the lease right now. No heartbeat is written for
at most P plus a round trip across a takeover; its TTL (default 3 s, at least 1.5 P)
and the bridges' stale limit (3 s) outlast that, so /readyz stays ready. While the
leader's stream is down its renewal deletes the heartbeat instead: the leader knows at
once that nothing will come, and the bridges tell their sockets the feed is stale at
their next poll (about a second) rather than once the last heartbeat has aged out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

Command = tuple[bytes, ...]

# The lease check every write starts with: KEYS[1] is the lease key, ARGV[1] the writer's
# lease value; the script's own keys and arguments follow from index 2. It is the only
# part of a script that reads the lease, so on Redis Cluster `CLUSTER_FENCE` replaces
# just this piece and the key it reads.
FENCE = b"""
local lease = redis.call('GET', KEYS[1])
if lease ~= ARGV[1] then return redis.error_reply('FENCED ' .. (lease or '-')) end
"""
# Redis Cluster: KEYS[1] is the fence key of the slot the script writes, ARGV[1] the
# writer's lease value. Tokens are compared as numbers, so fences raised out of order
# (one slot's write of lease 8 landing after another's of lease 9) stay safe: a lower
# token is refused, an equal one (the same lease) writes, a higher one raises the fence
# first. The fence has no TTL: it must outlive every lease that could still write.
# A takeover (a fence raised over another lease's) also marks the slot for TAKEOVER_MS
# (`<fence key>:takeover`, same slot): the scripts after it may check that they do not
# write a book older than the one the key holds (marketdata.ingest.slot_writes).
TAKEOVER_MS = 3000
CLUSTER_FENCE = b"""
local fence = redis.call('GET', KEYS[1])
if fence ~= ARGV[1] then
  if fence and tonumber(string.match(fence, '^%d+') or '0') > tonumber(string.match(ARGV[1], '^%d+')) then
    return redis.error_reply('FENCED ' .. fence)
  end
  redis.call('SET', KEYS[1], ARGV[1])
  if fence then redis.call('SET', KEYS[1] .. ':takeover', '1', 'PX', '""" + str(TAKEOVER_MS).encode() + b"""') end
end
"""
FENCED = "FENCED"  # the first word of a refused script's error

# KEYS: lease, token, heartbeat; ARGV: holder, lease ms, token floor, heartbeat payload ('' = none), heartbeat ms.
# The floor is the highest token the caller has seen: after a Redis restart (an empty
# server) tokens still start above every value an ingestor alive now has seen.
_ACQUIRE_LUA = b"""
local lease = redis.call('GET', KEYS[1])
if lease then return {0, lease, redis.call('PTTL', KEYS[1])} end
local floor = tonumber(ARGV[3])
if tonumber(redis.call('GET', KEYS[2]) or '0') < floor then redis.call('SET', KEYS[2], floor) end
lease = redis.call('INCR', KEYS[2]) .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], lease, 'NX', 'PX', ARGV[2])
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5]) end
return {1, lease}
"""
# KEYS: lease, heartbeat, token; ARGV: value, lease ms, heartbeat payload ('' = the stream is down: delete it), heartbeat ms.
# KEYS[3] is the token counter: a lease that expired while its holder could not reach
# Redis (a failover of its server or of its cluster shard) is taken back with the same
# value when nobody acquired one since (the counter is not above the holder's token; a
# counter lost with the data is set back to it): the holder, not a standby, leads on.
# Replies 1 (renewed) or 2 (taken back).
_RENEW_LUA = b"""
local lease = redis.call('GET', KEYS[1])
local back = 1
if not lease then
  local mine = tonumber(string.match(ARGV[1], '^%d+'))
  local counter = tonumber(redis.call('GET', KEYS[3]) or '0')
  if counter > mine then return redis.error_reply('FENCED -') end
  if counter < mine then redis.call('SET', KEYS[3], mine) end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  back = 2
elseif lease ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. lease)
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) else redis.call('DEL', KEYS[2]) end
return back
"""
# KEYS: lease; ARGV: value. Deletes the key only if it still holds the caller's value.
_RELEASE_LUA = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Fence:
    """What a fenced script is run with: the lease key and the writer's lease value."""

    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Holder:
    """A lease value, parsed: the fencing token and the holder's name."""

    token: int
    name: str

    @classmethod
    def parse(cls, value: bytes | str | None) -> Holder | None:
        """None for a free lease (None, b"-") or a value this module did not write."""
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else value
        token, _, name = text.partition(" ")
        if not token.isdigit() or not name:
            return None
        return cls(int(token), name)

    def __str__(self) -> str:
        return f"{self.name} (token {self.token})"


def refusal(message: str) -> Holder | None | bool:
    """False when `message` is not a fence's refusal; else who holds the lease (None: nobody)."""
    word, _, rest = message.partition(" ")
    if word != FENCED:
        return False
    return Holder.parse(rest)


_LATE = 0.003  # seconds a standby bids after the TTL it saw, so that the key has surely expired


class Step(enum.Enum):
    ACQUIRE = "acquire"
    RENEW = "renew"
    RELEASE = "release"
    WAIT = "wait"  # a standby without a live stream: nothing to publish, so no bid for the lease


@dataclass(slots=True)
class Lease:
    """One ingestor's view of the lease; every method is pure and takes the time it needs."""

    name: str  # this ingestor, unique per process (host, pid and a random part)
    period: float  # seconds
    value: bytes | None = None  # our lease value while we lead
    token: int = 0  # the highest token seen
    until: float = 0.0  # local time our lease surely holds until: when the last confirmed renewal was sent, plus period
    seen: Holder | None = None  # the leader a standby last saw, to log each change once
    retry: float | None = None  # seconds until the lease we saw expires, when that is sooner than P/4
    hold_off_until: float = 0.0  # local time before which a standby does not bid: it lost sight of the lease

    @property
    def leading(self) -> bool:
        return self.value is not None

    @property
    def interval(self) -> float:
        """Seconds from one step's start to the next: P/3 while leading; P/4 standing by, or until the lease expires."""
        if self.leading:
            return self.period / 3
        return self.period / 4 if self.retry is None else self.retry

    @property
    def ms(self) -> bytes:
        return b"%d" % max(1, round(self.period * 1000))

    def step(self, live: bool, down_for: float, now: float = 0.0) -> Step:
        """What to do now; `down_for` is how long the simulator stream has been down (0 when live).

        A standby that could not reach the lease holds its bid for one period after its
        last failed attempt (`unreachable`): a leader that lived through the same outage
        takes its expired lease back first (the renewal script), so the two never publish
        side by side; a dead leader is replaced one period later than otherwise.
        """
        if self.leading:
            return Step.RELEASE if not live and down_for >= self.period else Step.RENEW
        return Step.ACQUIRE if live and now >= self.hold_off_until else Step.WAIT

    # -- commands --------------------------------------------------------------------

    def acquire(self, keys: tuple[bytes, bytes, bytes], heartbeat: bytes, heartbeat_ms: int) -> Command:
        """EVAL that takes the lease if it is free; `keys` are the lease, token and heartbeat keys."""
        lease, token, beat = keys
        return (b"EVAL", _ACQUIRE_LUA, b"3", lease, token, beat, self.name.encode(), self.ms, b"%d" % self.token, heartbeat, b"%d" % heartbeat_ms)

    def renew(self, keys: tuple[bytes, bytes, bytes], heartbeat: bytes, heartbeat_ms: int) -> Command:
        """Fenced EVAL that extends our lease (or takes it back, expired and untaken) and refreshes the
        heartbeat, or deletes it when `heartbeat` is empty; `keys` are the lease, token and heartbeat keys."""
        assert self.value is not None, "renew while standing by"
        lease, token, beat = keys
        return (b"EVAL", _RENEW_LUA, b"3", lease, beat, token, self.value, self.ms, heartbeat, b"%d" % heartbeat_ms)

    def release(self, lease_key: bytes) -> Command:
        """EVAL that deletes the lease key if it still holds our value."""
        assert self.value is not None, "release while standing by"
        return (b"EVAL", _RELEASE_LUA, b"1", lease_key, self.value)

    # -- answers ---------------------------------------------------------------------

    def acquired(self, reply: list[object], sent: float) -> str | None:
        """The acquire script's reply: `[1, value]` (ours now) or `[0, value, pttl ms]` (held by another)."""
        taken, value = reply[:2]
        if not taken:
            # Bid again just after it expires (a few ms late: our step started before Redis measured it).
            pttl = reply[2] if len(reply) > 2 and isinstance(reply[2], int) else -1
            expiry = pttl / 1000 + _LATE
            self.retry = expiry if pttl >= 0 and expiry < self.period / 4 else None
            return self.held_by(Holder.parse(value))  # type: ignore[arg-type]
        self.retry = None
        self.value = value if isinstance(value, bytes) else str(value).encode()
        holder = Holder(int(self.value.partition(b" ")[0]), self.name)  # the script wrote it: "TOKEN our name"
        self.token = max(self.token, holder.token)
        self.until = sent + self.period
        self.seen = holder
        return f"took the lease (token {holder.token}): this ingestor publishes"

    def renewed(self, sent: float, reply: object = 1) -> str | None:
        """The renewal's reply: 1 renewed, 2 taken back (it had expired while Redis was out of our reach)."""
        self.until = sent + self.period
        if reply == 2:
            holder = Holder.parse(self.value)
            return f"took the lease back (token {holder.token if holder else '?'}): it expired while Redis was out of reach, and nobody took it"
        return None

    def held_by(self, holder: Holder | None) -> str | None:
        """Redis says `holder` has the lease (None: nobody), not us: stand by, say so on a change."""
        if holder is not None:
            self.token = max(self.token, holder.token)
        if self.leading:
            self.value = None
            self.seen = holder
            if holder is None:
                return "lost the lease: it expired before it was renewed; standing by"
            return f"lost the lease to {holder}; standing by"
        if holder is None or holder == self.seen or holder.name == self.name:
            return None  # free (we bid again next step), already reported, or our own old lease expiring
        self.seen = holder
        return f"standing by: {holder} leads"

    def unreachable(self, now: float, keep: bool = False) -> str | None:
        """Redis did not answer: a standby holds its bid (see `step`); a leader, once its lease has surely
        expired, stops believing it leads, unless it may `keep` leading (a cluster's slot fences guard it)."""
        if not self.leading:
            self.hold_off_until = now + self.period
            return None
        if not keep and now >= self.until:
            self.value = None
            self.seen = None
            return "lost the lease: it expired before Redis confirmed a renewal; standing by"
        return None

    def released(self) -> str:
        """We deleted our lease (shutdown, or the stream stayed down), or found it gone: stand by."""
        holder = Holder.parse(self.value)
        self.value = None
        self.seen = None
        return f"released the lease (token {holder.token if holder else '?'})"
