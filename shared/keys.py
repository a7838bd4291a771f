"""Every Redis key the service uses, in one place.

Data keys (collections, images, vectors, thumbnails, the change log) live as long as the data.
Job and upload keys always carry a TTL.
"""

from __future__ import annotations

COLLECTIONS = "ss:collections"  # set of collection names
# One counter orders jobs and deletes across the deployment: a delete wins over an add whose job
# was created before it.
SEQUENCE = "ss:seq"


# -- collections: a header slot, and one slot per shard ------------------------------------------
# Keys are hash-tagged so that a Redis Cluster keeps each group in one slot: the collection's
# header and whole-collection data under `{name}`, each shard's data under `{name:i}` (collection
# names have neither braces nor colons). Every Lua script touches one of these groups only. An
# unsharded collection is shard 0 of 1: the same keys, the same code.
def collection(name: str) -> str:
    # hash: the collection's header; its fields, and their one parser: shared.collections.header
    return f"ss:c:{{{name}}}"


def clustering(name: str) -> str:
    return f"ss:c:{{{name}}}:clustering"  # hash: the latest clustering (k, scores, centroids, version)


def labels(name: str) -> str:
    return f"ss:c:{{{name}}}:labels"  # hash: image_id -> cluster number


def cluster_members(name: str, cluster: int) -> str:
    return f"ss:c:{{{name}}}:cluster:{cluster}"  # list of image ids, nearest the centroid first


def _shard(name: str, shard: int) -> str:
    return f"ss:c:{{{name}:{shard}}}"


def shard(name: str, shard: int) -> str:
    # hash: the shard's header (version, model copy, re-embed marker copy): shared.collections.header
    return _shard(name, shard)


def images(name: str, shard: int) -> str:
    return f"{_shard(name, shard)}:images"  # hash: image_id -> ImageRecord JSON


def order(name: str, shard: int) -> str:
    return f"{_shard(name, shard)}:order"  # sorted set: image_id by the shard's version at its add (paging)


def vectors(name: str, shard: int) -> str:
    return f"{_shard(name, shard)}:vectors"  # hash: image_id -> float16 bytes, L2-normalised (shared.vectors)


def staged_vectors(name: str, shard: int) -> str:
    return f"{_shard(name, shard)}:vectors:next"  # hash: vectors of a re-embed job, swapped in when it ends


def tombstone(name: str, shard: int, image_id: str) -> str:
    return f"{_shard(name, shard)}:tomb:{image_id}"  # the SEQUENCE value of the image's delete (with a TTL)


def thumbnails(name: str, shard: int) -> str:
    return f"{_shard(name, shard)}:thumbs"  # hash: image_id -> JPEG bytes (before the blob store)


def log(name: str, shard: int) -> str:
    # stream of {op: add|del|reset, id, n}: what the shard's replicas replay; n is the shard's
    # version after the entry, so a replica that sees n jump knows entries were trimmed away unseen
    return f"{_shard(name, shard)}:log"


def snapshot(name: str, shard: int) -> str:
    return f"{_shard(name, shard)}:snapshot"  # hash: the shard's newest replica snapshot (blob key, log position, ...)


def snapshot_lock(name: str, shard: int) -> str:
    return snapshot(name, shard) + ":lock"  # one worker writes a shard's snapshot at a time


def legacy(name: str, what: str = "") -> str:
    """A key of the layout before shards had keys of their own (`python -m worker.migrate`)."""
    return f"ss:c:{name}" + (f":{what}" if what else "")


# -- jobs: every key of a job in the job's slot -----------------------------------------------------
def job(job_id: str) -> str:
    return f"ss:job:{{{job_id}}}"  # hash: the job record


def job_inputs(job_id: str) -> str:
    return f"ss:job:{{{job_id}}}:inputs"  # hash: item index -> JobInput JSON


def job_items(job_id: str) -> str:
    return f"ss:job:{{{job_id}}}:items"  # hash: item index -> ItemOutcome JSON


def job_attempts(job_id: str) -> str:
    return f"ss:job:{{{job_id}}}:attempts"  # hash: "chunk:<first>" / "item:<i>" -> times started


def job_errors(job_id: str) -> str:
    return f"ss:job:{{{job_id}}}:errors"  # list of ItemError JSON, in arrival order


def job_results(job_id: str) -> str:
    return f"ss:job:{{{job_id}}}:results"  # hash: query index -> {"query", "image_id", "matches"} JSON


def job_batches(job_id: str) -> str:
    return f"ss:job:{{{job_id}}}:batches"  # hash: "<source>:<n>" -> first item index; "done:<source>"


def job_keys(job_id: str) -> list[str]:
    """A job's own keys (DELETE /v1/jobs/{id}); the rest of a batch's chunk keys expire alone."""
    return [
        job(job_id),
        job_inputs(job_id),
        job_items(job_id),
        job_attempts(job_id),
        job_errors(job_id),
        job_results(job_id),
        job_batches(job_id),
    ]


WEBHOOKS_DUE = "ss:webhooks"  # zset: job id -> when its callback should next be tried
# zset: job id -> when it last showed life (created, started, an item recorded, a batch listed);
# a job leaves it when it finishes. The watchdog (worker/upkeep/watchdog.py) re-drives jobs gone quiet.
OPEN_JOBS = "ss:jobs:open"
WATCHDOG_LOCK = "ss:jobs:watchdog"  # one watchdog pass at a time across workers
OWNER_OPEN_PREFIX = "ss:owner:"


def owner_open(owner: str) -> str:
    """zset: the requester's open jobs -> when each was created. A job leaves it when it finishes,
    or, expired unfinished, by its age (pruned when counted): no count can drift up for good."""
    return f"{OWNER_OPEN_PREFIX}{{{owner}}}:open"


def owner_reserved(owner: str) -> str:
    """hash: the requester's open jobs -> items reserved for them at admission (counted until the
    job's own record says more: a growing job's total starts at 0)."""
    return f"{OWNER_OPEN_PREFIX}{{{owner}}}:reserved"


def owner_results(owner: str) -> str:
    """zset: the requester's batch searches -> bytes their results hold (reserved from k x queries
    when created, measured when the job ends); jobs gone are pruned when counted (api/fairness.py)."""
    return f"{OWNER_OPEN_PREFIX}{{{owner}}}:results"


JOB_DONE_CHANNEL_PREFIX = "ss:jobdone:"


def job_done_channel(job_id: str) -> str:
    return f"{JOB_DONE_CHANNEL_PREFIX}{job_id}"


JOB_COUNTS = "ss:metrics:jobs"  # hash: "<type>:<status>" -> jobs that reached that status
WORKER_METRICS_PREFIX = "ss:metrics:worker:"


def worker_metrics(worker: str) -> str:
    return f"{WORKER_METRICS_PREFIX}{worker}"  # hash of one worker process's counters (with a TTL)


# Blob store keys (bytes live there, not in Redis: the claim-check pattern).
def upload_blob(job_id: str, index: int) -> str:
    return f"uploads/{job_id}/{index}"  # one uploaded file, until its chunk is processed


def source_blob(job_id: str, source: int) -> str:
    return f"uploads/{job_id}/source-{source}"  # an archive or URL list, until it is expanded


def rendition_image_id(blob_key: str) -> str:
    """The image a `rendition_blob` key names."""
    return blob_key.split("/")[2]


def rendition_blob(collection: str, image_id: str, generation: str) -> str:
    # One key per add of an image (generation = the adding job), so a delete removes exactly the
    # rendition of the record it deleted, never that of a later re-add.
    return f"renditions/{collection}/{image_id}/{generation}.jpg"


def snapshot_blob(collection: str, version: int, token: str, part: str = "") -> str:
    folder = f"snapshots/{collection}/{part}" if part else f"snapshots/{collection}"
    return f"{folder}/{version}-{token}.npz"  # a replica snapshot (shared.ann format)


def job_query(job_id: str) -> str:
    return f"ss:job:{{{job_id}}}:query"  # a fanned-out search's query vector (float32), for every shard


def job_shards(job_id: str) -> str:
    return f"ss:job:{{{job_id}}}:shards"  # shard -> its answer (JSON), as the shards of a search answer


def batch_chunk(job_id: str, first: int) -> str:
    # a sharded batch search's chunk (by its first query index): the queries' vectors and who they are
    return f"ss:job:{{{job_id}}}:batch:{first}"


def batch_answers(job_id: str, first: int) -> str:
    return f"ss:job:{{{job_id}}}:batch:{first}:shards"  # shard -> its answers to that chunk (JSON)


def batch_partial(job_id: str) -> str:
    return f"ss:job:{{{job_id}}}:partial"  # set: first indices of chunks merged without every shard


def callback_lock(job_id: str) -> str:
    return f"{job(job_id)}:callback-lock"  # one delivery attempt of a job's webhook at a time


def rate(subject: str, second: int) -> str:
    # Fixed one-second windows, so every API replica counts against the same limit.
    return f"ss:rl:{subject}:{second}"


def auth_failures(address: str) -> str:
    return f"ss:authfail:{address}"  # failed authentications from one client address (a minute)


# Celery's (kombu's) index of unacknowledged messages: the heartbeat keeps its workers' entries fresh.
CELERY_UNACKED_INDEX = "unacked_index"
