"""`python -m worker.place_shards`: a collection's shard slots moved so that the primaries of a
Redis Cluster hold shard counts within one of each other, keys and all (a real cluster)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from shared import keys
from shared.collections import ops
from shared.schemas import ImageRecord, utcnow
from tests.integration.services import start_cluster
from worker.place_shards import move_slot, plan
from worker.store import Embedding, NewImage, WorkerStore

pytestmark = pytest.mark.cluster
SHARDS = 6


def _per_primary(client: RedisCluster, name: str) -> Counter:
    return Counter(
        client.nodes_manager.get_node_from_slot(key_slot(keys.shard(name, s).encode())).name for s in range(SHARDS)
    )


def test_shards_end_spread_over_the_primaries_with_their_data(tmp_path: Path) -> None:
    from shared.blobs import open_blob_store

    cluster = start_cluster(tmp_path, replicas_per_primary=0)
    try:
        client = RedisCluster.from_url(cluster.url)
        store = WorkerStore(client, open_blob_store(f"file://{tmp_path / 'blobs'}", fsync=False), 1000, 3600)
        # Names whose shard slots hash unevenly: the first few have a primary with 3 or more.
        name = next(f"p{i}" for i in range(100) if max(_per_primary(client, f"p{i}").values()) >= 3)
        store.data.run(ops.create(name, SHARDS, utcnow()))
        rng = np.random.default_rng(0)
        images = [
            NewImage(
                ImageRecord(
                    image_id=f"{i:08x}" + "0" * 24,
                    filename=f"{i}.jpg",
                    format="JPEG",
                    width=1,
                    height=1,
                    size=0,
                    created_at="x",
                ),
                rng.standard_normal(8).astype(np.float32),
            )
            for i in range(60)
        ]
        assert store.add_images(name, Embedding("m", "m@8", 8), 0, images).count(1) == 60
        before = store.data.run(ops.vector_ids(name))
        moves = plan(client, name, SHARDS)
        assert moves
        for _, slot, target in moves:
            move_slot(client, slot, target)
        assert sorted(_per_primary(client, name).values()) == [2, 2, 2]
        assert plan(client, name, SHARDS) == []
        assert store.data.run(ops.vector_ids(name)) == before  # every image, found where it now lives
        assert store.data.run(ops.listed(name))[1] == 60
    finally:
        cluster.stop()
