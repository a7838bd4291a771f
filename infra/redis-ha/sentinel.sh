#!/bin/sh
# Starts one Sentinel of the Celery broker (BROKER_URL=sentinel://...). Sentinel rewrites its own
# configuration, so it is rendered at each start into DATA_DIR (default /data), not mounted. The
# primary to watch is, in this order:
#   1. the one the other Sentinels (SENTINELS: host:port separated by spaces, this one included)
#      name, so that a Sentinel restarted after a failover watches the new primary;
#   2. else the broker Redis (BROKER_NODES: host:port separated by spaces) that reports the role
#      `master` (with the most replicas, if several do);
#   3. else the first of BROKER_NODES (a new deployment).
# It waits up to WAIT_S seconds (default 120) for one of them to answer before it takes the third.
#
# Access: clients ask a Sentinel for the primary's address without a password (Celery's kombu does
# not authenticate to Sentinels; shared/connect.py does, with the broker's password, which a user
# without a password accepts). That default user may run only those discovery commands (PING,
# SENTINEL get-master-addr-by-name, masters, replicas, sentinels ...) and listen to the events;
# anything that changes Sentinel (SENTINEL SET, MONITOR, REMOVE, FAILOVER, CONFIG, SHUTDOWN) needs
# the user `admin` with REDIS_PASSWORD, which the Sentinels use among themselves:
#   redis-cli -p 26379 --user admin --pass "$REDIS_PASSWORD" SENTINEL FAILOVER mymaster
#
# Also read: REDIS_PASSWORD (the broker Redis' password), BROKER_MASTER_NAME (default mymaster),
# QUORUM (Sentinels that must agree the primary is down, default 2), PORT (default 26379),
# DOWN_AFTER_MS (default 5000), FAILOVER_TIMEOUT_MS (default 30000), and ANNOUNCE_HOST, the name
# the other Sentinels and clients reach this one by (else this host's name followed by
# ANNOUNCE_SUFFIX). Extra arguments go to redis-server.
# (docker-compose.yml, profile `cluster`; infra/k8s/examples/redis-broker-sentinel.yaml)
set -eu
: "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
: "${BROKER_NODES:?set BROKER_NODES: the broker Redis as host:port, the first primary first}"
: "${SENTINELS:?set SENTINELS: the Sentinels as host:port}"
master_name=${BROKER_MASTER_NAME:-mymaster}
quorum=${QUORUM:-2}
port=${PORT:-26379}
dir=${DATA_DIR:-/data}
announce=${ANNOUNCE_HOST:-$(hostname)${ANNOUNCE_SUFFIX:-}}
me=$announce:$port
deadline=$(($(date +%s) + ${WAIT_S:-120}))

say() { echo "sentinel.sh: $*"; }
die() {
  echo "sentinel.sh: $*" >&2
  exit 1
}
in_time() { [ "$(date +%s)" -lt "$deadline" ]; }
ask() {
  a=$1
  shift
  REDISCLI_AUTH=$REDIS_PASSWORD timeout 5 redis-cli -h "${a%:*}" -p "${a##*:}" "$@" 2>/dev/null | tr -d '\r'
}
ask_sentinel() {
  a=$1
  shift
  (unset REDISCLI_AUTH && timeout 5 redis-cli -h "${a%:*}" -p "${a##*:}" "$@" 2>/dev/null | tr -d '\r')
}
resolves() {
  case $1 in
    *[!0-9.]*) { timeout 3 getent hosts "$1" || timeout 3 nslookup "$1"; } >/dev/null 2>&1 ;;
    *) true ;;
  esac
}

primary=""
while [ -z "$primary" ]; do
  for s in $SENTINELS; do
    [ "$s" != "$me" ] || continue
    reply=$(ask_sentinel "$s" SENTINEL get-master-addr-by-name "$master_name")
    p=$(printf '%s\n' "$reply" | sed -n 2p)
    case $p in
      '' | *[!0-9]*) continue ;;
    esac
    primary=$(printf '%s\n' "$reply" | sed -n 1p):$p
    why="Sentinel $s names it"
    break
  done
  [ -z "$primary" ] || break
  most=-1
  for n in $BROKER_NODES; do
    replication=$(ask "$n" INFO replication)
    printf '%s\n' "$replication" | grep -qx 'role:master' || continue
    replicas=$(printf '%s\n' "$replication" | sed -n 's/^connected_slaves://p')
    if [ "${replicas:-0}" -gt "$most" ]; then
      most=${replicas:-0}
      primary=$n
      why="no other Sentinel answers; $n reports the role master, with $most replica(s)"
    fi
  done
  [ -z "$primary" ] || break
  if ! in_time; then
    for n in $BROKER_NODES; do
      primary=$n
      break
    done
    why="nothing answered within ${WAIT_S:-120}s: the first of BROKER_NODES"
    break
  fi
  sleep 2
done

# With resolve-hostnames, Sentinel refuses to start on a name that does not resolve (yet).
until resolves "${primary%:*}"; do
  in_time || die "${primary%:*} does not resolve"
  sleep 2
done

umask 077 # the file holds the password
conf=$dir/sentinel.conf
# A fixed id per Sentinel (from its name): a restarted Sentinel is the same one to its peers.
id=$(printf '%s' "$me" | sha1sum | cut -c1-40)
cat >"$conf" <<EOF_CONF
# Rendered by sentinel.sh at each start; Sentinel rewrites it as it learns.
port $port
dir $dir
sentinel myid $id
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $announce
user default on nopass allchannels -@all +ping +hello +auth +client|setname +role +subscribe +psubscribe +unsubscribe +punsubscribe +sentinel|get-master-addr-by-name +sentinel|master +sentinel|masters +sentinel|replicas +sentinel|slaves +sentinel|sentinels +sentinel|ckquorum +sentinel|myid
user admin on >$REDIS_PASSWORD allchannels +@all
sentinel sentinel-user admin
sentinel sentinel-pass $REDIS_PASSWORD
sentinel monitor $master_name ${primary%:*} ${primary##*:} $quorum
sentinel auth-pass $master_name $REDIS_PASSWORD
sentinel down-after-milliseconds $master_name ${DOWN_AFTER_MS:-5000}
sentinel failover-timeout $master_name ${FAILOVER_TIMEOUT_MS:-30000}
sentinel parallel-syncs $master_name 1
EOF_CONF
say "$me watches $primary as $master_name, quorum $quorum ($why)"
# Through the image's entrypoint, which drops root for the `redis` user (and owns /data to it).
exec docker-entrypoint.sh redis-server "$conf" --sentinel "$@"
