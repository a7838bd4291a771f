#!/bin/sh
# Starts one node of the data Redis Cluster: redis-cluster.conf (beside this file), its files in
# DATA_DIR (default /data), the password REDIS_PASSWORD for clients and for a replica's sync with its
# primary, and the name the node announces to clients: ANNOUNCE_HOST, else this host's name followed
# by ANNOUNCE_SUFFIX (in Kubernetes the pod's name and its headless Service's domain). Extra
# arguments go to redis-server.
#
# A node without nodes.conf is new: its volume is new, or lost. If the cluster (asked through
# CLUSTER_NODES, host:port separated by spaces) still counts a primary with slots that announced
# this same name, that is this node's former self, just gone: the node waits until the primary's
# replica has taken over (the cluster fails the primary over within seconds; after WAIT_S seconds,
# default 30, the node asks the replica to, and after twice that it starts anyway). Started earlier,
# at the old primary's address, the empty node would be taken for it by that replica, which would
# copy its empty data set (Redis checks no node identity on the replication link).
#
# A node with nodes.conf knows its peers, and itself, by the addresses they last had. Containers or
# pods recreated together all come back at new addresses, and none would find another: the
# addresses are looked up again from the names the nodes announced (a name that does not resolve
# yet keeps its old address; that peer, once started, finds this node and tells it where it is).
#
# Usage: cluster-node.sh [redis-server options...]
# (docker-compose.yml, profile `cluster`; infra/k8s/examples/redis-cluster.yaml)
set -eu
: "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
announce=${ANNOUNCE_HOST:-$(hostname)${ANNOUNCE_SUFFIX:-}}
dir=${DATA_DIR:-/data}
deadline=$(($(date +%s) + ${WAIT_S:-30}))

# The IPv4 address of a name: getent (musl and glibc), else nslookup; 3 s each at most.
resolve() {
  { timeout 3 getent hosts "$1" || timeout 3 nslookup "$1"; } 2>/dev/null | awk '
    /^Name:/ { named = 1 }
    { for (i = 1; i <= NF; i++) if ((named || i == 1) && $i ~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/) { print $i; exit } }'
}

if [ -e "$dir/nodes.conf" ]; then
  # Lines: id ip:port@cport[,hostname[,aux=...]] flags ...; the last one is `vars ...`.
  changed=""
  while read -r id address flags rest; do
    case $flags in
      *noaddr*) ;;
      *)
        name=${address#*,}
        name=${name%%,*}
        case $address in *,*) ;; *) name="" ;; esac
        ip=$( [ -z "$name" ] || resolve "$name")
        if [ -n "$ip" ] && [ "$ip" != "${address%%:*}" ]; then
          echo "cluster-node.sh: $name ($id) is now at $ip" >&2 # stdout is the new file
          address=$ip:${address#*:}
          changed=1
        fi
        ;;
    esac
    echo "$id $address $flags $rest"
  done <"$dir/nodes.conf" >"$dir/nodes.conf.new"
  if [ -n "$changed" ]; then
    mv "$dir/nodes.conf.new" "$dir/nodes.conf"
  else
    rm "$dir/nodes.conf.new"
  fi
fi

if [ ! -e "$dir/nodes.conf" ] && [ -n "${CLUSTER_NODES:-}" ]; then
  asked=""
  while :; do
    former=""
    for node in $CLUSTER_NODES; do
      view=$(REDISCLI_AUTH=$REDIS_PASSWORD timeout 5 redis-cli -h "${node%:*}" -p "${node##*:}" CLUSTER NODES 2>/dev/null |
        tr -d '\r') || true
      case $view in
        *connected*) ;;
        *) continue ;; # not started, or not answering: ask another
      esac
      # "primary-id replica-address" (a replica of it that is up, if any)
      former=$(printf '%s\n' "$view" | awk -v name="$announce" '
        { split($2, address, ","); split(address[1], hostport, "@") }
        address[2] == name && $3 ~ /master/ && NF > 8 { primary = $1 }
        $3 ~ /slave/ && ("," $3 ",") !~ /,(fail|fail\?|noaddr),/ { replica[$4] = hostport[1] }
        END { if (primary != "") print primary, replica[primary] }')
      break
    done
    [ -n "$former" ] || break
    now=$(date +%s)
    replica=${former#* }
    former=${former%% *}
    if [ "$now" -ge "$deadline" ] && [ -n "$replica" ] && [ -z "$asked" ]; then
      # A replica that has not heard from its primary since it started itself (a cluster restarted
      # just before) does not fail over on its own; a forced failover skips that check.
      echo "cluster-node.sh: asking $replica to take over from $former (CLUSTER FAILOVER FORCE)"
      REDISCLI_AUTH=$REDIS_PASSWORD timeout 5 redis-cli -h "${replica%:*}" -p "${replica##*:}" CLUSTER FAILOVER FORCE || true
      asked=1
    elif [ "$now" -ge "$((deadline + ${WAIT_S:-30}))" ]; then
      echo "cluster-node.sh: WARNING: $former, which was $announce, still holds slots: starting anyway" >&2
      break
    fi
    echo "cluster-node.sh: $former, which was $announce, still holds slots: waiting for its replica ${replica:-(none up)} to take over"
    sleep 2
  done
fi

# Through the image's entrypoint, which drops root for the `redis` user (and owns /data to it).
# Redis overwrites its process title, so the password does not show in `ps`.
exec docker-entrypoint.sh redis-server "$(dirname "$0")/redis-cluster.conf" --dir "$dir" \
  --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD" \
  --cluster-announce-hostname "$announce" "$@"
