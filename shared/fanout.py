"""The shard fan-out protocol: a search (or a batch search's chunk) of a sharded collection is
asked of every shard, each shard answers from its replica, and the answers are merged into the
one answer a replica of everything would give.

What the API and the workers both need lives here, and nothing in it imports worker code:

- the task messages of a fan-out (`fan_out_messages`, sent with `publish`): one per shard queue
  and the deadline, built once for the API (search by a stored id) and the workers;
- the shards' answers, typed (`ShardAnswer`, `BatchShardAnswer`: stored as JSON, one hash field
  per shard);
- the merge (`merge`): each query's k best over the shards, the highest threshold a shard applied,
  the shards that did not answer, and `ShardsUnavailable` when none did (`EmbeddingsDiffer` when
  they answered from vectors of two embeddings);
- the fan-out's Redis keys (`FanOutStore`, the worker's store inherits it) with their two scripts.

The steps (answer a shard, merge when the last one answered or at the deadline) are the workers':
worker/search/searching.py for a search, worker/search/batch_shards.py for a batch chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import redis
from pydantic import BaseModel

from shared import keys
from shared.errors import SimsearchError
from shared.jobs.lifecycle import FINAL_STATUSES
from shared.queueing import (
    BATCH_DEADLINE_TASK,
    BATCH_SHARD_TASK,
    DEADLINE_QUEUE,
    SEARCH_DEADLINE_TASK,
    SEARCH_SHARD_TASK,
)
from shared.schemas import Threshold
from shared.shards import shard_queue

if TYPE_CHECKING:
    from celery import Celery

Hit = tuple[str, float]  # (image id, similarity)


# -- the task messages --------------------------------------------------------------------------
class TaskMessage(NamedTuple):
    """One task to send by name (the API holds no worker code): `countdown` delays it."""

    name: str
    args: list[Any]
    queue: str
    countdown: float | None = None


def fan_out_messages(
    job_id: str, collection: str, shards: int, timeout_s: float, indices: list[int] | None = None
) -> list[TaskMessage]:
    """A fan-out's tasks: one per shard, on that shard's queue (args: the job's, then shard and
    shards), and the deadline `timeout_s` later (args: the job's, then shards), which ends the
    search with what answered. The job's args: (job id, collection), and for a batch search's chunk
    its query `indices` too."""
    job_args: list[Any] = [job_id, collection]
    shard_task, deadline_task = SEARCH_SHARD_TASK, SEARCH_DEADLINE_TASK
    if indices is not None:
        job_args.append(indices)
        shard_task, deadline_task = BATCH_SHARD_TASK, BATCH_DEADLINE_TASK
    messages = [TaskMessage(shard_task, [*job_args, shard, shards], shard_queue(shard)) for shard in range(shards)]
    messages.append(TaskMessage(deadline_task, [*job_args, shards], DEADLINE_QUEUE, timeout_s))
    return messages


def publish(app: Celery, messages: list[TaskMessage]) -> None:
    """Send the messages on one broker connection (blocking I/O)."""
    with app.producer_or_acquire() as producer:
        for m in messages:
            app.send_task(m.name, args=m.args, queue=m.queue, countdown=m.countdown, producer=producer)


# -- the shards' answers ------------------------------------------------------------------------
class _Answer(BaseModel):
    # The threshold the shard calibrated on its part of the collection (worker/search/calibration.py).
    threshold: Threshold | None = None
    # The embedding (model@input size) of the shard's vectors: shards swap one by one at the end of
    # a re-embed, and answers of two embeddings are never merged.
    embedding: str | None = None

    def hits_of(self, query: int) -> list[Hit]:
        raise NotImplementedError

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class ShardAnswer(_Answer):
    """One shard's answer to a search: its k best that reach its threshold."""

    hits: list[Hit] = []
    size: int = 0  # the shard's images
    served_by: str | None = None
    passed: int | None = None  # how many of its images a filter (or cluster) let through
    query_cluster: int | None = None
    best: float | None = None  # its closest image, threshold or not (what "no match" reports)

    def hits_of(self, query: int) -> list[Hit]:
        return self.hits


class BatchShardAnswer(_Answer):
    """One shard's answers to a batch chunk: each query's (by index) k best, before any threshold."""

    answers: dict[str, list[Hit]] = {}

    def hits_of(self, query: int) -> list[Hit]:
        return self.answers.get(str(query), [])


# -- the merge ----------------------------------------------------------------------------------
class ShardsUnavailable(SimsearchError):
    """No shard answered before the deadline."""

    def __init__(self, shards: int) -> None:
        detail = f"none of the {shards} shards answered within the shard timeout (no live worker serves them?)"
        super().__init__(detail, code="shards_unavailable", status_code=503)


class EmbeddingsDiffer(ShardsUnavailable):
    """The shards answered from vectors of different embeddings (a re-embed swapping them)."""

    def __init__(self, embeddings: set[str]) -> None:
        SimsearchError.__init__(
            self,
            f"the shards hold vectors of {sorted(embeddings)}: a re-embed is swapping them; search again shortly",
            code="reembed_swapping",
            status_code=503,
        )


@dataclass(frozen=True)
class Merged:
    hits: dict[int, list[Hit]]  # by query: its k best over the shards
    threshold: Threshold | None  # the highest any shard applied
    missing: list[int]  # the shards that did not answer


def merge(answers: Mapping[int, _Answer], shards: int, k: int, queries: Iterable[int] = (0,)) -> Merged:
    """The shards' answers (by shard) as one: each query's k best in the order one replica of
    everything gives (similarity, then id), and the highest threshold a shard applied (a shard
    holds part of the collection, so its nearest neighbours are farther than the whole's: the
    highest is the closest to the whole's). Raises ShardsUnavailable if no shard answered."""
    if not answers:
        raise ShardsUnavailable(shards)
    embeddings = {a.embedding for a in answers.values() if a.embedding}
    if len(embeddings) > 1:
        raise EmbeddingsDiffer(embeddings)
    hits = {
        q: sorted((h for a in answers.values() for h in a.hits_of(q)), key=lambda h: (-h[1], h[0]))[:k] for q in queries
    }
    thresholds = [a.threshold for a in answers.values() if a.threshold is not None]
    threshold = max(thresholds, key=lambda t: t.value) if thresholds else None
    return Merged(hits, threshold, sorted(set(range(shards)) - set(answers)))


# -- the fan-out's keys -------------------------------------------------------------------------
# A shard's answer. KEYS: the answers (hash: shard -> answer JSON; a search's, or a batch chunk's),
# the job record. ARGV: shard, answer JSON, ttl, final statuses... Returns how many shards have
# answered, or -1 if the job already ended (a late shard after the deadline: nothing is written).
RECORD_SHARD = """
local status = redis.call('HGET', KEYS[2], 'status')
for i = 4, #ARGV do
  if status == ARGV[i] then return -1 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HLEN', KEYS[1])
"""

# A sharded batch chunk's merge writes its rows only if the chunk is still there and the shards
# that answered are those it merged: the deadline's merge must not overwrite (or be overwritten
# by) the fuller one of a shard that answered in between.
# KEYS: chunk, answers, results, partial set. ARGV: shards merged, ttl, partial (0/1), first, then
# field, row pairs.
WRITE_BATCH_MERGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HLEN', KEYS[2]) ~= tonumber(ARGV[1]) then return 0 end
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
if #ARGV >= 5 then redis.call('EXPIRE', KEYS[3], ARGV[2]) end
if ARGV[3] == '1' then redis.call('SADD', KEYS[4], ARGV[4]) else redis.call('SREM', KEYS[4], ARGV[4]) end
redis.call('EXPIRE', KEYS[4], ARGV[2])
return 1
"""


def f32_bytes(matrix: np.ndarray) -> bytes:
    """Vectors as a fanned-out search stores its queries (float32, for every shard to read)."""
    return np.ascontiguousarray(matrix, dtype="<f4").tobytes()


class FanOutStore:
    """The fan-out's reads and writes in Redis: a search's query and its shards' answers; a batch
    chunk's queries, its shards' answers and its merged rows. The worker's store inherits it."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._record_shard = client.register_script(RECORD_SHARD)
        self._write_batch_merge = client.register_script(WRITE_BATCH_MERGE)

    def record_shard(
        self, job_id: str, shard: int, answer: _Answer | dict[str, Any], ttl_s: int, key: str | None = None
    ) -> int:
        """Store one shard's answer (in `key`: a batch chunk's answers); how many shards have
        answered (-1: the job already ended)."""
        raw = answer.dump() if isinstance(answer, _Answer) else answer
        record_keys = [key or keys.job_shards(job_id), keys.job(job_id)]
        return int(self._record_shard(keys=record_keys, args=[shard, json.dumps(raw), ttl_s, *FINAL_STATUSES]))

    # -- a search: its query vector, stored once for every shard --------------------------------
    def put_query(self, job_id: str, query: np.ndarray, ttl_s: int) -> None:
        self.redis.set(keys.job_query(job_id), f32_bytes(query), ex=ttl_s)

    def query(self, job_id: str) -> np.ndarray | None:
        raw = self.redis.get(keys.job_query(job_id))
        return np.frombuffer(raw, dtype="<f4").copy() if raw else None

    def shard_answers(self, job_id: str) -> dict[int, ShardAnswer]:
        raw = self.redis.hgetall(keys.job_shards(job_id))
        return {int(k): ShardAnswer.model_validate_json(v) for k, v in raw.items()}

    def drop_fan_out(self, job_id: str) -> None:
        """A fanned-out search ended: its query and shard answers are no longer needed."""
        self.redis.delete(keys.job_query(job_id), keys.job_shards(job_id))

    # -- a batch search's chunk: its queries, stored once for every shard ------------------------
    def put_batch_chunk(self, job_id: str, first: int, rows: list[dict[str, Any]], matrix: np.ndarray, ttl_s: int):
        key = keys.batch_chunk(job_id, first)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"rows": json.dumps(rows), "vectors": f32_bytes(matrix)})
        pipe.expire(key, ttl_s)
        pipe.execute()

    def batch_chunk(self, job_id: str, first: int) -> tuple[list[dict[str, Any]], np.ndarray] | None:
        raw_rows, raw_vectors = self.redis.hmget(keys.batch_chunk(job_id, first), ["rows", "vectors"])
        if raw_rows is None or raw_vectors is None:
            return None
        rows = json.loads(raw_rows)
        return rows, np.frombuffer(raw_vectors, dtype="<f4").reshape(len(rows), -1).copy()

    def batch_answers(self, job_id: str, first: int) -> dict[int, BatchShardAnswer]:
        raw = self.redis.hgetall(keys.batch_answers(job_id, first))
        return {int(k): BatchShardAnswer.model_validate_json(v) for k, v in raw.items()}

    def write_batch_merge(
        self, job_id: str, first: int, merged: int, rows: dict[str, str], partial: bool, ttl_s: int
    ) -> bool:
        """Write a chunk's merged rows (and whether it lacks a shard) unless the chunk is gone or
        more shards answered since the `merged` ones were read: then another merge owns it."""
        pairs = [x for field, row in rows.items() for x in (field, row)]
        chunk_keys = [
            keys.batch_chunk(job_id, first),
            keys.batch_answers(job_id, first),
            keys.job_results(job_id),
            keys.batch_partial(job_id),
        ]
        return bool(self._write_batch_merge(keys=chunk_keys, args=[merged, ttl_s, int(partial), first, *pairs]))

    def partial_chunks(self, job_id: str) -> int:
        """How many of a batch search's chunks were merged without every shard."""
        return int(self.redis.scard(keys.batch_partial(job_id)))

    def drop_batch_chunk(self, job_id: str, first: int) -> None:
        self.redis.delete(keys.batch_chunk(job_id, first), keys.batch_answers(job_id, first))
