#!/bin/sh
# Forms the data Redis Cluster from CLUSTER_NODES (every node, host:port separated by spaces) with
# CLUSTER_REPLICAS replicas per primary (default 1: 6 nodes make 3 primaries and 3 replicas), or
# mends the one they already form. Idempotent, so it may run at every start: docker-compose.yml's
# `redis-cluster-init`, the Job of infra/k8s/examples/redis-cluster.yaml.
# - Every node new (no peer, no slot): `redis-cli --cluster create`.
# - Otherwise nothing is created. The nodes already in the cluster meet each other again at their
#   current addresses, so that nodes whose containers or pods all came back at other addresses find
#   each other (the cluster bus knows peers by address only; meeting a peer already known there
#   changes nothing). A new node among them (its volume was lost) joins as the replica of the
#   primary with the fewest replicas, once the node it replaces (the same announced name) holds no
#   slots any more, and that node is forgotten.
# Then it waits until every node sees every other, reports the cluster `ok`, each primary has its
# replicas, each replica is in sync, and `redis-cli --cluster check` passes: exit 0. Non-zero if
# that does not happen within WAIT_S seconds (default 300). Slots that no node serves any more (a
# primary and its replicas all lost) are left to a person: `redis-cli --cluster fix`.
# REDIS_PASSWORD: the nodes' password (passed to redis-cli in REDISCLI_AUTH, never as an argument).
# IPv4 only: CLUSTER MEET and `--cluster create` take addresses, so names are resolved here.
set -eu
: "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
: "${CLUSTER_NODES:?set CLUSTER_NODES: every node as host:port, separated by spaces}"
replicas=${CLUSTER_REPLICAS:-1}
wait_s=${WAIT_S:-300}
export REDISCLI_AUTH="$REDIS_PASSWORD"
deadline=$(($(date +%s) + wait_s))

say() { echo "create-cluster.sh: $*"; }
die() {
  echo "create-cluster.sh: $*" >&2
  exit 1
}
in_time() { [ "$(date +%s)" -lt "$deadline" ]; }
# cli ADDRESS COMMAND...: one command to the node at ADDRESS (ip:port), bounded in time.
cli() {
  a=$1
  shift
  timeout 10 redis-cli -h "${a%:*}" -p "${a##*:}" "$@" | tr -d '\r'
}
# The IPv4 address of a name (an address stays itself): getent (musl and glibc), else nslookup.
resolve() {
  case $1 in
    *[!0-9.]*) ;;
    *) echo "$1" && return 0 ;;
  esac
  { timeout 3 getent hosts "$1" || timeout 3 nslookup "$1"; } 2>/dev/null | awk '
    /^Name:/ { named = 1 }
    { for (i = 1; i <= NF; i++) if ((named || i == 1) && $i ~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/) { print $i; exit } }'
}
# info ADDRESS FIELD: one field of CLUSTER INFO.
info() { cli "$1" CLUSTER INFO | sed -n "s/^$2://p"; }

# 1. Every node answers (a node replaying its AOF answers -LOADING until it is done).
addresses=""
for node in $CLUSTER_NODES; do
  host=${node%:*}
  port=${node##*:}
  while :; do
    ip=$(resolve "$host")
    reply=""
    [ -z "$ip" ] || reply=$(cli "$ip:$port" PING 2>&1) || true
    [ "$reply" != PONG ] || break
    in_time || die "$node does not answer PING (${ip:-name not resolved}): ${reply:-no reply}"
    sleep 2
  done
  addresses="$addresses $ip:$port"
done
say "nodes:$addresses"

# 2. Which nodes are new: they know no peer and serve no slot.
fresh=""
joined=""
for a in $addresses; do
  known=$(info "$a" cluster_known_nodes)
  slots=$(info "$a" cluster_slots_assigned)
  [ -n "$known" ] || die "$a answers no CLUSTER INFO: is it started with cluster-enabled yes?"
  if [ "$known" = 1 ] && [ "$slots" = 0 ]; then
    fresh="$fresh $a"
  else
    joined="$joined $a"
  fi
done

# retire_replaced: the nodes that a new node replaces are gone for good (their identity was on the
# lost volume): a failed or address-less node, in the view of a member, that announced the name a
# new node now has. Without slots, every node forgets it (none keeps waiting for it). With slots and
# no address (the new node answered at its address before it was found failing, so Redis will
# never fail it over), its replica is promoted with CLUSTER FAILOVER FORCE. With slots and failed,
# the cluster's own failover is under way. Sets `pending` while such a node still has slots.
retire_replaced() {
  pending=""
  for f in $fresh; do
    name=$(cli "$f" CONFIG GET cluster-announce-hostname | sed -n 2p)
    new_id=$(cli "$f" CLUSTER MYID)
    [ -n "$name" ] || continue
    actions=$(cli "$anchor" CLUSTER NODES | awk -v name="$name" -v me="$new_id" '
      { split($2, address, ","); split(address[1], hostport, "@") }
      $3 ~ /slave/ && ("," $3 ",") !~ /,(fail|fail\?|noaddr),/ && $8 == "connected" { replica[$4] = hostport[1] }
      $1 != me && address[2] == name && $3 ~ /(^|,)(fail|noaddr)(,|$)/ { gone[$1] = $3; slots[$1] = NF > 8 }
      END {
        for (id in gone)
          if (!slots[id]) print "forget", id
          else if (gone[id] !~ /noaddr/) print "wait", id
          else if (id in replica) print "promote", id, replica[id]
          else print "lost", id
      }')
    while read -r verb id replica; do
      case $verb in
        forget)
          say "forgetting $id: replaced by $f ($name)"
          for a in $addresses; do
            cli "$a" CLUSTER FORGET "$id" >/dev/null 2>&1 || true
          done
          ;;
        promote)
          # Once: a new request would restart the election (and the voters wait between votes).
          case " $promoted " in
            *" $id "*) ;;
            *)
              say "promoting $replica: its primary $id was replaced by $f ($name)"
              # cluster-node.sh waits for the failover before it starts a new node; unless it
              # could not, the replica may already have copied the new node's empty data set.
              if [ "$(cli "$f" INFO replication | sed -n 's/^connected_slaves://p')" != 0 ]; then
                say "WARNING: $f, new and empty, has had replicas: the slots of $id may have lost their data"
              fi
              cli "$replica" CLUSTER FAILOVER FORCE >/dev/null
              promoted="$promoted $id"
              ;;
          esac
          pending=1
          ;;
        wait) pending=1 ;;
        lost) die "$id ($name) was replaced by $f but holds slots and has no replica: redis-cli --cluster fix" ;;
      esac
    done <<EOF_ACTIONS
$actions
EOF_ACTIONS
  done
}

anchor=""
promoted=""
if [ -z "$joined" ]; then
  say "every node is new: creating the cluster, $replicas replica(s) per primary"
  # shellcheck disable=SC2086 # one argument per node
  redis-cli --cluster create $addresses --cluster-replicas "$replicas" --cluster-yes
  fresh=""
else
  # shellcheck disable=SC2086
  set -- $joined
  anchor=$1
  say "already formed (seen from$joined); new nodes:${fresh:- none}"
  # Each member meets every other at its current address (a handshake with a known node only
  # updates its address; the handful of extra messages costs nothing).
  for a in $joined; do
    for b in $joined; do
      [ "$a" = "$b" ] || cli "$a" CLUSTER MEET "${b%:*}" "${b##*:}" >/dev/null
    done
  done
  # A new node joins only a cluster that serves every slot (a primary whose volume was lost is
  # replaced by its replica first: a failover, within seconds).
  for a in $joined; do
    until [ "$(info "$a" cluster_state)" = ok ]; do
      in_time || die "$a reports cluster_state:$(info "$a" cluster_state): slots without a node? (redis-cli --cluster check / fix)"
      sleep 2
    done
  done
  retire_replaced
  while [ -n "$pending" ]; do
    in_time || die "a replaced primary still holds slots"
    sleep 2
    retire_replaced
  done
  for f in $fresh; do
    say "adding $f as a replica"
    redis-cli --cluster add-node "$f" "$anchor" --cluster-slave
  done
fi

# 3. Until every node sees the whole cluster.
while :; do
  retire_replaced
  problem=""
  ids=""
  for a in $addresses; do
    ids="$ids $(cli "$a" CLUSTER MYID)"
  done
  for a in $addresses; do
    state=$(info "$a" cluster_state)
    nodes=$(cli "$a" CLUSTER NODES)
    if [ "$state" != ok ]; then
      problem="$a reports cluster_state:${state:-?}"
    else
      for id in $ids; do
        printf '%s\n' "$nodes" | awk -v id="$id" '$1 == id && ("," $3 ",") !~ /,(fail|fail\?|noaddr|handshake),/ { found = 1 } END { exit !found }' ||
          problem="$a does not (yet) see $id as a live member"
      done
    fi
    [ -z "$problem" ] || break
  done
  if [ -z "$problem" ]; then
    for a in $addresses; do
      link=$(cli "$a" INFO replication | sed -n 's/^master_link_status://p')
      [ "${link:-up}" = up ] || problem="$a, a replica, has not synchronised with its primary yet"
    done
  fi
  if [ -z "$problem" ]; then
    # Each primary with slots has its replicas (right after a create they are still attaching).
    problem=$(printf '%s\n' "$nodes" | awk -v want="$replicas" '
      $3 ~ /master/ && ("," $3 ",") !~ /,(fail|fail\?),/ && NF > 8 { primaries[$1] = 0 }
      $3 ~ /slave/ && ("," $3 ",") !~ /,(fail|fail\?),/ && $8 == "connected" { count[$4]++ }
      END { for (p in primaries) if (count[p] < want) { printf "primary %s has %d replica(s), not %d", p, count[p], want; exit } }')
  fi
  if [ -z "$problem" ]; then
    if check=$(redis-cli --cluster check "$a" 2>&1); then
      say "the cluster is whole: $(printf '%s\n' "$nodes" | awk '$3 ~ /master/ && NF > 8 { p++ } $3 ~ /slave/ { r++ }
        END { printf "%d primaries with slots, %d replicas", p, r }')"
      exit 0
    fi
    problem="redis-cli --cluster check:
$check"
  fi
  in_time || die "$problem"
  sleep 2
done
