#!/bin/sh
# Writes the Redis ACL file of the marketdata roles (Redis 7+ or Valkey) from passwords
# in the environment, where Kubernetes puts them from the Secret `marketdata-redis`.
# Passwords are stored as SHA-256 hashes (`#hex`), so the file holds no cleartext;
# the default user is off, so every client has to log in as one of:
#
#   ingest   writes under the prefix: SET, PUBLISH/SPUBLISH, EVAL/EVALSHA (the publishing
#            scripts), LPUSH/LTRIM (recent trades), the heartbeat and the leader lease
#   bridge   reads under the prefix: SUBSCRIBE/SSUBSCRIBE, GET, LRANGE, PING
#   inspect  read-only for people: GET, LRANGE, SCAN, (P|S)SUBSCRIBE ... (valkey-cli --user inspect)
#
# Nobody gets the dangerous commands (FLUSHALL, CONFIG, KEYS, DEBUG, CLIENT KILL, ...):
# administer the server from inside its pod.
#
# Usage: redis-acl.sh [OUTPUT]   (default /acl/users.acl, - for standard output; MD_PREFIX,
# default md, is the key prefix). For a Redis of your own, the lines are ACL SETUSER
# arguments: redis-acl.sh - | sed 's/^user /ACL SETUSER /'
set -eu

out=${1:-/acl/users.acl}
prefix=${MD_PREFIX:-md}

hash() {
    printf '%s' "$1" | sha256sum | cut -d' ' -f1
}

for name in REDIS_INGEST_PASSWORD REDIS_BRIDGE_PASSWORD REDIS_INSPECT_PASSWORD; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "redis-acl: $name is empty; set it in the Secret marketdata-redis" >&2
        exit 1
    fi
done

keys="~${prefix}:*"
read_keys="%R~${prefix}:*"
channels="&${prefix}:*"
# Connecting (AUTH, HELLO, CLIENT SETNAME/SETINFO, PING) is allowed to every role; the
# dangerous commands are taken away again after each grant.
connect="-@all +@connection -@dangerous"

lines() {
    echo "user default off resetpass nocommands resetkeys resetchannels"
    echo "user ingest on #$(hash "$REDIS_INGEST_PASSWORD") resetkeys resetchannels $keys $channels $connect +@read +@write +@pubsub +@scripting +@transaction -@dangerous"
    echo "user bridge on #$(hash "$REDIS_BRIDGE_PASSWORD") resetkeys resetchannels $read_keys $channels $connect +get +mget +exists +ttl +pttl +lrange +subscribe +ssubscribe +unsubscribe +sunsubscribe"
    echo "user inspect on #$(hash "$REDIS_INSPECT_PASSWORD") resetkeys resetchannels $read_keys $channels $connect +@read -@dangerous +subscribe +psubscribe +ssubscribe +unsubscribe +punsubscribe +sunsubscribe"
}

if [ "$out" = "-" ]; then
    lines
    exit 0
fi
umask 077
lines >"$out.tmp"
mv "$out.tmp" "$out"
echo "redis-acl: wrote users default (off), ingest, bridge, inspect to $out"
