"""The per-shard key layout (issue 23): every key a script takes is in one Redis Cluster slot, and
pages over shards laid end to end cover each image once."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from shared import keys
from shared.collections import ops, scripts


def _slots(names: list[str]) -> set[int]:
    return {key_slot(name.encode()) for name in names}


@pytest.mark.parametrize("shard", [0, 3])
def test_each_collection_script_takes_keys_of_one_slot(shard: int) -> None:
    ids = ["0" * 32, "f" * 32, "1234abcd" + "0" * 24]
    built = [
        scripts.ADD_IMAGES.keys("pets", shard, ids),
        scripts.DELETE_IMAGE.keys("pets", shard, ids[0]),
        scripts.SWAP_VECTORS.keys("pets", shard),
        scripts.STAGE_VECTORS.keys("pets", shard),
        scripts.BEGIN_SHARD_REEMBED.keys("pets", shard),
        scripts.ABORT_SHARD_REEMBED.keys("pets", shard),
        scripts.PUBLISH_SNAPSHOT.keys("pets", shard),
        scripts.REPLACE_RECORDS.keys("pets", shard),
    ]
    for names in built:
        assert len(_slots(names)) == 1, names
    assert len(_slots([keys.shard("pets", s) for s in range(8)])) == 8  # shards spread over slots
    header = [scripts.CREATE_COLLECTION.keys("pets"), scripts.CLAIM_MODEL.keys("pets")]
    header += [[keys.clustering("pets"), keys.labels("pets"), keys.cluster_members("pets", 2)]]
    assert len(_slots([k for names in header for k in names])) == 1


def test_a_jobs_keys_share_its_slot() -> None:
    assert len(_slots([*keys.job_keys("abc"), keys.job_query("abc"), keys.batch_chunk("abc", 64)])) == 1
    assert len(_slots([keys.owner_open("k"), keys.owner_reserved("k"), keys.owner_results("k")])) == 1


@pytest.mark.parametrize(
    ("counts", "offset", "limit", "spans"),
    [
        ([5, 0, 3], 0, 10, [(0, 0, 4), (2, 0, 2)]),
        ([5, 0, 3], 4, 2, [(0, 4, 4), (2, 0, 0)]),
        ([5, 0, 3], 5, 10, [(2, 0, 2)]),
        ([5, 0, 3], 8, 10, []),
        ([2, 2, 2, 2], 3, 3, [(1, 1, 1), (2, 0, 1)]),
    ],
)
def test_pages_over_shards_laid_end_to_end(counts, offset, limit, spans) -> None:
    assert ops._spans(counts, offset, limit) == spans
    covered = sum(b - a + 1 for _, a, b in spans)
    assert covered == max(0, min(limit, sum(counts) - offset))


def test_answers_of_two_embeddings_are_never_merged() -> None:
    from shared.fanout import EmbeddingsDiffer, ShardAnswer, merge

    old = ShardAnswer(hits=[("a" * 32, 0.9)], size=1, embedding="resnet50@224")
    new = ShardAnswer(hits=[("b" * 32, 0.8)], size=1, embedding="resnet50@256")
    assert merge({0: old, 1: old.model_copy()}, 2, 5).hits[0] == [("a" * 32, 0.9), ("a" * 32, 0.9)]
    with pytest.raises(EmbeddingsDiffer) as raised:
        merge({0: old, 1: new}, 2, 5)
    assert raised.value.code == "reembed_swapping" and raised.value.status_code == 503
