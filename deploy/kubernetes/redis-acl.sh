#!/bin/sh
# Writes the Redis ACL file of the marketdata roles (Redis 7+ or Valkey) from passwords
# in the environment: Kubernetes puts them there from the Secret `marketdata-redis`,
# docker-compose.yml from the file .env. Passwords are stored as SHA-256 hashes (`#hex`),
# so the file holds no cleartext; the default user is off, so every client has to log
# in as one of:
#
#   ingest   writes under the prefix: GET, SET, DEL, INCR, PEXPIRE, PTTL, LPUSH, LTRIM,
#            PUBLISH/SPUBLISH, run by the publishing and lease scripts (EVAL/EVALSHA)
#   bridge   reads under the prefix: SUBSCRIBE/SSUBSCRIBE (and UN-), GET, MGET, LRANGE
#   inspect  read-only for people: every read command, SCAN, (P|S)SUBSCRIBE (valkey-cli --user inspect)
#
# Nobody gets the dangerous commands (FLUSHALL, CONFIG, KEYS, DEBUG, CLIENT KILL, ...):
# administer the server from inside its pod. These lines are the ones of
# marketdata/supervisor/acl.py, which `marketdata up` loads into its embedded server; a
# test (tests/unit/test_acl.py) holds the two equal: change both together.
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
        echo "redis-acl: $name is empty; set it in the Secret marketdata-redis (Kubernetes) or in .env (docker compose)" >&2
        exit 1
    fi
done

keys="~${prefix}:*"
read_keys="%R~${prefix}:*"
channels="&${prefix}:*"
# Connecting (AUTH, HELLO, CLIENT SETNAME/SETINFO, PING) is allowed to every role; the
# dangerous commands are taken away again after each grant of a category.
connect="-@all +@connection -@dangerous"
subscribe="+subscribe +ssubscribe +unsubscribe +sunsubscribe"
# What a Redis Cluster client asks to find the shards (redis-py: CLUSTER SLOTS/SHARDS, COMMAND).
cluster="+cluster|slots +cluster|shards +cluster|nodes +cluster|info +cluster|myid +command +readonly"

lines() {
    echo "user default off resetpass nocommands resetkeys resetchannels"
    echo "user ingest on #$(hash "$REDIS_INGEST_PASSWORD") resetkeys resetchannels $keys $channels $connect +get +set +del +incr +pexpire +pttl +lpush +ltrim +publish +spublish +eval +evalsha $cluster"
    echo "user bridge on #$(hash "$REDIS_BRIDGE_PASSWORD") resetkeys resetchannels $read_keys $channels $connect +get +mget +lrange $subscribe $cluster"
    # PSUBSCRIBE patterns must equal an allowed channel pattern, not match it: hence the extra two
    echo "user inspect on #$(hash "$REDIS_INSPECT_PASSWORD") resetkeys resetchannels $read_keys $channels &${prefix}:book:* &${prefix}:delta:* &${prefix}:trades:* $connect +@read -@dangerous $subscribe +psubscribe +punsubscribe +pubsub|channels +pubsub|numsub +pubsub|shardchannels +pubsub|shardnumsub $cluster"
}

if [ "$out" = "-" ]; then
    lines
    exit 0
fi
umask 077
lines >"$out.tmp"
mv "$out.tmp" "$out"
echo "redis-acl: wrote users default (off), ingest, bridge, inspect to $out"
