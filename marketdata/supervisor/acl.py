"""The Redis users of the roles: what each may do, written once as ACL rules.

Pure: a key prefix and passwords in, lines of an ACL file out (each line is also the
arguments of `ACL SETUSER` after its first word). The embedded server of `up` and of the
tests loads them (marketdata.supervisor.redis_server); deploy/kubernetes/redis-acl.sh,
which the Kubernetes manifests and docker-compose.yml run, writes the same lines (a test
holds the two equal).

    default  off: a client that does not log in can do nothing
    ingest   writes under the prefix: the commands of the publishing and lease scripts
             (GET, SET, DEL, INCR, PEXPIRE, PTTL, LPUSH, LTRIM, PUBLISH, SPUBLISH), run
             through EVAL/EVALSHA, which Redis 7 and Valkey check against the caller's rights
    bridge   reads under the prefix: (S)SUBSCRIBE and (S)UNSUBSCRIBE, GET, MGET, LRANGE
    all      in a Redis Cluster, what a cluster client asks to find the shards (CLUSTER
             SLOTS, SHARDS, NODES, INFO, MYID, COMMAND, READONLY)
    inspect  read-only, for people: every read command under the prefix, SCAN, and
             (P|S)SUBSCRIBE (PSUBSCRIBE patterns: PREFIX:*, PREFIX:book:*, PREFIX:trades:*)
    admin    everything; only the owner of an embedded server (`up`, the tests) uses it,
             never a role

Every role may connect (AUTH, HELLO, PING, CLIENT SETNAME/SETINFO: the @connection
category) and no role gets a @dangerous command (FLUSHALL, CONFIG, KEYS, DEBUG, CLIENT
KILL, ...). Passwords are written as SHA-256 hashes (`#hex`), so an ACL file holds no
cleartext. SCAN lists key names outside the prefix too (Redis does not filter it by key
pattern); the values stay out of reach.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

ROLES = ("ingest", "bridge", "inspect")
ADMIN = "admin"

DEFAULT_OFF = "user default off resetpass nocommands resetkeys resetchannels"
# Connecting is allowed to every role; the dangerous commands are taken away again after
# each grant of a category.
_CONNECT = ("-@all", "+@connection", "-@dangerous")
_SUBSCRIBE = ("+subscribe", "+ssubscribe", "+unsubscribe", "+sunsubscribe")
# What a Redis Cluster client asks to find the shards (redis-py: CLUSTER SLOTS/SHARDS, COMMAND).
_CLUSTER = ("+cluster|slots", "+cluster|shards", "+cluster|nodes", "+cluster|info", "+cluster|myid", "+command", "+readonly")
_COMMANDS: dict[str, tuple[str, ...]] = {
    "ingest": ("+get", "+set", "+del", "+incr", "+pexpire", "+pttl", "+lpush", "+ltrim",
               "+publish", "+spublish", "+eval", "+evalsha", *_CLUSTER),
    "bridge": ("+get", "+mget", "+lrange", *_SUBSCRIBE, *_CLUSTER),
    "inspect": ("+@read", "-@dangerous", *_SUBSCRIBE, "+psubscribe", "+punsubscribe",
                "+pubsub|channels", "+pubsub|numsub", "+pubsub|shardchannels", "+pubsub|shardnumsub", *_CLUSTER),
}  # fmt: skip


class AclError(ValueError):
    """A role without a password, or a password or prefix that cannot go into an ACL line."""


def _check(what: str, value: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise AclError(f"{what} must be a non-empty word without spaces, not {value!r}")


def password_hash(password: str) -> str:
    """The hex SHA-256 of a password, as ACL files and `ACL SETUSER #...` take it."""
    return hashlib.sha256(password.encode()).hexdigest()


def rules(role: str, prefix: str = "md") -> tuple[str, ...]:
    """The ACL rules of `role` (one of ROLES) after its `on #hash`."""
    if role not in _COMMANDS:
        raise AclError(f"no role {role!r}; the roles are {', '.join(ROLES)}")
    _check("the key prefix", prefix)
    keys = f"~{prefix}:*" if role == "ingest" else f"%R~{prefix}:*"
    channels = [f"&{prefix}:*"]
    if role == "inspect":  # PSUBSCRIBE patterns must equal an allowed pattern, not match it
        channels += [f"&{prefix}:book:*", f"&{prefix}:delta:*", f"&{prefix}:trades:*"]
    return ("resetkeys", "resetchannels", keys, *channels, *_CONNECT, *_COMMANDS[role])


def user_line(role: str, password: str, prefix: str = "md") -> str:
    """The ACL file line of one role."""
    _check(f"the password of {role}", password)
    return " ".join(("user", role, "on", f"#{password_hash(password)}", *rules(role, prefix)))


def admin_line(password: str) -> str:
    """The ACL file line of the admin user: every key, channel and command."""
    _check("the admin password", password)
    return f"user {ADMIN} on #{password_hash(password)} ~* &* +@all"


def acl_lines(passwords: Mapping[str, str], prefix: str = "md") -> list[str]:
    """The ACL file of the roles: the default user off, then each of ROLES with its password.

    An `admin` entry in `passwords` adds the admin user last.
    """
    missing = [role for role in ROLES if not passwords.get(role)]
    if missing:
        raise AclError(f"no password for {', '.join(missing)}")
    lines = [DEFAULT_OFF, *(user_line(role, passwords[role], prefix) for role in ROLES)]
    if ADMIN in passwords:
        lines.append(admin_line(passwords[ADMIN]))
    return lines
