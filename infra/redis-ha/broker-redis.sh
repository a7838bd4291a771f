#!/bin/sh
# Starts one Redis of the Celery broker behind Sentinel (BROKER_URL=sentinel://...), as the primary
# or as the replica of the primary, which it learns, in this order, from
#   1. the Sentinels (SENTINELS: host:port separated by spaces): the primary they name;
#   2. the other broker Redis (BROKER_NODES: host:port separated by spaces, as they announce
#      themselves): the one that reports the role `master`;
#   3. else the first of BROKER_NODES (a new deployment: nobody is primary yet).
# So a former primary that comes back after a failover rejoins as a replica instead of starting as a
# second primary with stale messages (Sentinel would demote it, but not at once).
# The configuration is rendered into DATA_DIR (default /data), since Sentinel rewrites it on a
# failover (CONFIG REWRITE): broker.conf (beside this file), the password REDIS_PASSWORD, PORT
# (default 6379), the name announced to the primary and so to Sentinel and clients (ANNOUNCE_HOST,
# else this host's name followed by ANNOUNCE_SUFFIX) and `replicaof`. Extra arguments go to
# redis-server. BROKER_MASTER_NAME: the Sentinels' name for the primary (default mymaster).
# (docker-compose.yml, profile `cluster`; infra/k8s/examples/redis-broker-sentinel.yaml)
set -eu
: "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
: "${BROKER_NODES:?set BROKER_NODES: the broker Redis as host:port, the first primary first}"
: "${SENTINELS:?set SENTINELS: the Sentinels as host:port}"
master_name=${BROKER_MASTER_NAME:-mymaster}
port=${PORT:-6379}
dir=${DATA_DIR:-/data}
me=${ANNOUNCE_HOST:-$(hostname)${ANNOUNCE_SUFFIX:-}}:$port

say() { echo "broker-redis.sh: $*"; }
# ask ADDRESS COMMAND...: a broker Redis (the password in REDISCLI_AUTH, never an argument).
ask() {
  a=$1
  shift
  REDISCLI_AUTH=$REDIS_PASSWORD timeout 5 redis-cli -h "${a%:*}" -p "${a##*:}" "$@" 2>/dev/null | tr -d '\r'
}
# ask_sentinel ADDRESS COMMAND...: a Sentinel, which answers these questions without a password.
ask_sentinel() {
  a=$1
  shift
  (unset REDISCLI_AUTH && timeout 5 redis-cli -h "${a%:*}" -p "${a##*:}" "$@" 2>/dev/null | tr -d '\r')
}

primary=""
for s in $SENTINELS; do
  reply=$(ask_sentinel "$s" SENTINEL get-master-addr-by-name "$master_name")
  host=$(printf '%s\n' "$reply" | sed -n 1p)
  p=$(printf '%s\n' "$reply" | sed -n 2p)
  case $p in
    '' | *[!0-9]*) continue ;; # no answer, or this Sentinel knows no primary yet
  esac
  primary=$host:$p
  why="Sentinel $s names it"
  break
done
if [ -z "$primary" ]; then
  for n in $BROKER_NODES; do
    [ "$n" != "$me" ] || continue
    if [ "$(ask "$n" ROLE | sed -n 1p)" = master ]; then
      primary=$n
      why="no Sentinel answers; $n reports the role master"
      break
    fi
  done
fi
if [ -z "$primary" ]; then
  for n in $BROKER_NODES; do
    primary=$n
    break
  done
  why="no Sentinel and no other broker Redis names one: the first of BROKER_NODES"
fi

umask 077 # the file holds the password
conf=$dir/broker-runtime.conf
{
  echo "# Rendered by broker-redis.sh at each start; Sentinel may rewrite it."
  echo "include $(cd "$(dirname "$0")" && pwd)/broker.conf"
  echo "port $port"
  echo "dir $dir"
  echo "requirepass $REDIS_PASSWORD"
  echo "masterauth $REDIS_PASSWORD"
  echo "replica-announce-ip ${me%:*}"
  [ "$primary" = "$me" ] || echo "replicaof ${primary%:*} ${primary##*:}"
} >"$conf"
if [ "$primary" = "$me" ]; then
  say "$me starts as the primary ($why)"
else
  say "$me starts as a replica of $primary ($why)"
fi
# Through the image's entrypoint, which drops root for the `redis` user (and owns /data to it).
exec docker-entrypoint.sh redis-server "$conf" "$@"
