"""The fan-out protocol's pure parts: its task messages, the shards' answers as stored, the merge."""

from __future__ import annotations

import json

import pytest

from shared.fanout import BatchShardAnswer, ShardAnswer, ShardsUnavailable, fan_out_messages, merge
from shared.schemas import Threshold


def test_a_search_fans_out_to_every_shard_queue_then_its_deadline() -> None:
    messages = fan_out_messages("j", "c", 3, 7.5)
    assert [(m.name, m.args, m.queue, m.countdown) for m in messages] == [
        ("simsearch.search_shard", ["j", "c", 0, 3], "search.s0", None),
        ("simsearch.search_shard", ["j", "c", 1, 3], "search.s1", None),
        ("simsearch.search_shard", ["j", "c", 2, 3], "search.s2", None),
        ("simsearch.search_deadline", ["j", "c", 3], "search.deadline", 7.5),
    ]


def test_a_batch_chunk_names_its_queries_in_every_message() -> None:
    messages = fan_out_messages("j", "c", 2, 5, indices=[4, 5])
    assert [(m.name, m.args, m.queue) for m in messages] == [
        ("simsearch.search_batch_shard", ["j", "c", [4, 5], 0, 2], "search.s0"),
        ("simsearch.search_batch_shard", ["j", "c", [4, 5], 1, 2], "search.s1"),
        ("simsearch.search_batch_deadline", ["j", "c", [4, 5], 2], "search.deadline"),
    ]


def test_answers_are_stored_as_the_json_the_shards_always_wrote() -> None:
    threshold = Threshold(value=0.5, source="collection", sample=10)
    answer = ShardAnswer(hits=[("a", 0.9)], size=3, served_by="w1", threshold=threshold, best=0.9)
    assert answer.dump() == {
        "hits": [["a", 0.9]],
        "size": 3,
        "served_by": "w1",
        "best": 0.9,
        "threshold": {"value": 0.5, "source": "collection", "sample": 10},
    }
    assert ShardAnswer.model_validate_json(json.dumps(answer.dump())) == answer
    empty = ShardAnswer.model_validate_json(json.dumps({"hits": [], "size": 0, "served_by": None}))
    assert empty.hits == [] and empty.best is None and empty.passed is None
    batch = BatchShardAnswer.model_validate_json(json.dumps({"answers": {"4": [["a", 0.25]]}}))
    assert batch.hits_of(4) == [("a", 0.25)] and batch.hits_of(5) == [] and batch.threshold is None


def test_the_merge_orders_by_similarity_then_id_and_keeps_k() -> None:
    answers = {
        0: ShardAnswer(hits=[("b", 0.9), ("d", 0.5)]),
        2: ShardAnswer(hits=[("a", 0.9), ("c", 0.7)]),
    }
    merged = merge(answers, 3, 3)
    assert merged.hits == {0: [("a", 0.9), ("b", 0.9), ("c", 0.7)]}
    assert merged.missing == [1] and merged.threshold is None


def test_the_merge_applies_the_highest_threshold_a_shard_did() -> None:
    low, high = Threshold(value=0.3, source="collection"), Threshold(value=0.6, source="collection")
    answers = {
        0: BatchShardAnswer(answers={"7": [("x", 0.4)]}, threshold=low),
        1: BatchShardAnswer(answers={"7": [("y", 0.8)], "8": [("z", 0.1)]}, threshold=high),
    }
    merged = merge(answers, 2, 10, [7, 8])
    assert merged.threshold == high and merged.missing == []
    assert merged.hits == {7: [("y", 0.8), ("x", 0.4)], 8: [("z", 0.1)]}


def test_no_shard_answering_is_an_error_of_its_own() -> None:
    with pytest.raises(ShardsUnavailable) as raised:
        merge({}, 4, 10)
    assert raised.value.code == "shards_unavailable" and raised.value.status_code == 503
    assert raised.value.detail.startswith("none of the 4 shards answered")
