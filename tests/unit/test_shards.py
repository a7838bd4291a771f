import hashlib

import pytest

from shared.shards import MAX_SHARDS, parse_shards, serves, shard_of, shard_queue
from worker.settings import WorkerSettings


def test_shard_of_is_stable_uniform_and_total() -> None:
    ids = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(4000)]  # like content ids
    assert all(shard_of(i, 1) == 0 for i in ids[:10])
    counts = [0] * 4
    for i in ids:
        counts[shard_of(i, 4)] += 1
    assert min(counts) > 900  # ~1000 each
    assert shard_of("00000007" + "0" * 24, 4) == 3  # the first 32 bits, modulo: what the Lua scripts compute
    assert shard_of("not-hex-at-all", 4) == 0


def test_parse_shards() -> None:
    assert parse_shards("all") is None and parse_shards("") is None
    assert parse_shards("0-3") == {0, 1, 2, 3}
    assert parse_shards("none") == frozenset() and not serves(frozenset(), 0)
    assert parse_shards("4,6, 8-9") == {4, 6, 8, 9}
    for bad in ("3-1", "-1", f"0-{MAX_SHARDS}", "x"):
        with pytest.raises(ValueError):
            parse_shards(bad)
    assert serves(None, 63) and serves(frozenset({1}), 1) and not serves(frozenset({1}), 0)
    assert shard_queue(3) == "search.s3"


def test_worker_settings_refuse_a_bad_shard_list() -> None:
    assert WorkerSettings(worker_shards="2-3").served_shard_list == [2, 3]
    assert len(WorkerSettings().served_shard_list) == MAX_SHARDS
    with pytest.raises(ValueError):
        WorkerSettings(worker_shards="5-2")


def test_the_shard_deadline_must_be_shorter_than_the_visibility_timeout() -> None:
    with pytest.raises(ValueError, match="SHARD_TIMEOUT_S"):
        WorkerSettings(shard_timeout_s=30, task_visibility_timeout_s=30)
    assert WorkerSettings(shard_timeout_s=29, task_visibility_timeout_s=30).shard_timeout_s == 29
    # Not set: the default follows a short visibility timeout instead of refusing to start.
    assert WorkerSettings(task_visibility_timeout_s=6).shard_timeout_s == 3
