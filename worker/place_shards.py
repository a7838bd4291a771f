"""Spread a collection's shards evenly over a Redis Cluster's primaries:

    python -m worker.place_shards COLLECTION [--dry-run]

Each shard of a collection lives in one slot (its keys are tagged `{name:i}`), and the slot's hash
decides its primary: 6 shards on 3 primaries may land 4, 1 and 1, and the busiest primary then holds
two thirds of the collection. This moves whole shard slots (`CLUSTER SETSLOT … MIGRATING /
IMPORTING`, `MIGRATE` of their keys, `CLUSTER SETSLOT … NODE`) until the primaries' shard counts
differ by at most one. Run it right after `PUT /v1/collections/{name}` with `shards`, while the
shards are empty (a move is then instant); on a loaded collection `MIGRATE` copies each key whole
and blocks both nodes meanwhile. Clients follow the moves (MOVED/ASK).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from shared import keys
from shared.collections import SCRIPTS as COLLECTION_SCRIPTS
from shared.collections import ops
from shared.runner import SyncRunner
from shared.settings import CommonSettings

BATCH = 100


def _node_id(node: ClusterNode) -> str:
    return node.redis_connection.execute_command("CLUSTER MYID").decode()  # type: ignore[union-attr]


def move_slot(cluster: RedisCluster, slot: int, target: ClusterNode, timeout_ms: int = 60_000) -> int:
    """Move one slot, keys and all, to `target`. Returns the keys moved."""
    source = cluster.nodes_manager.get_node_from_slot(slot)
    if source.name == target.name:
        return 0
    src, dst = source.redis_connection, target.redis_connection
    src_id, dst_id = _node_id(source), _node_id(target)
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    password = dst.connection_pool.connection_kwargs.get("password")
    auth = ["AUTH", password] if password else []
    moved = 0
    while names := src.execute_command("CLUSTER GETKEYSINSLOT", slot, BATCH):
        src.execute_command("MIGRATE", target.host, target.port, "", 0, timeout_ms, *auth, "KEYS", *names)
        moved += len(names)
    for node in cluster.get_primaries():
        node.redis_connection.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    cluster.nodes_manager.initialize()
    return moved


def plan(cluster: RedisCluster, collection: str, shards: int) -> list[tuple[int, int, ClusterNode]]:
    """(shard, slot, new primary) moves that leave the primaries' shard counts within one."""
    primaries = sorted(cluster.get_primaries(), key=lambda n: n.name)
    held: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for shard in range(shards):
        slot = key_slot(keys.shard(collection, shard).encode())
        held[cluster.nodes_manager.get_node_from_slot(slot).name].append((shard, slot))
    by_name = {n.name: n for n in primaries}
    moves = []
    while True:
        counts = {n.name: len(held[n.name]) for n in primaries}
        most, least = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
        if counts[most] - counts[least] <= 1:
            return moves
        shard, slot = held[most].pop()
        held[least].append((shard, slot))
        moves.append((shard, slot, by_name[least]))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.place_shards", description=__doc__.splitlines()[0])
    parser.add_argument("collection")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    settings = CommonSettings()
    if not settings.redis_cluster:
        raise SystemExit("REDIS_CLUSTER is not set: one Redis holds every shard")
    client = settings.redis()
    assert isinstance(client, RedisCluster)
    shards = SyncRunner(client, COLLECTION_SCRIPTS).run(ops.shard_count(args.collection))
    for shard, slot, target in plan(client, args.collection, shards):
        if args.dry_run:
            print(f"shard {shard} (slot {slot}) would move to {target.name}")
            continue
        try:
            moved = move_slot(client, slot, target)
        except redis.ResponseError as exc:
            raise SystemExit(f"moving shard {shard} (slot {slot}) failed: {exc}") from exc
        print(f"shard {shard} (slot {slot}) moved to {target.name}: {moved} keys")


if __name__ == "__main__":
    main()
