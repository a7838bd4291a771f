"""Task names, queues and the Celery settings that producer (API) and consumer (worker) share.

The API enqueues by name with `send_task`, so it never imports worker code (or TensorFlow).
"""

from __future__ import annotations

from typing import Any

from shared.connect import transport_options

INDEX_QUEUE = "index"
SEARCH_QUEUE = "search"
DEADLINE_QUEUE = "search.deadline"  # every worker, search-only ones too, ends overdue sharded searches
INDEX_CHUNK_TASK = "simsearch.index_chunk"
SEARCH_TASK = "simsearch.search"
REEMBED_CHUNK_TASK = "simsearch.reembed_chunk"
CLUSTER_TASK = "simsearch.cluster"
SEARCH_SHARD_TASK = "simsearch.search_shard"  # sent to shared.shards.shard_queue(shard)
SEARCH_DEADLINE_TASK = "simsearch.search_deadline"
DUPLICATES_TASK = "simsearch.duplicates"
BATCH_CHUNK_TASK = "simsearch.search_batch_chunk"  # a chunk of a batch search's queries
BATCH_SHARD_TASK = "simsearch.search_batch_shard"  # one shard's answers to a chunk (its shard queue)
BATCH_DEADLINE_TASK = "simsearch.search_batch_deadline"
EXPAND_TASK = "simsearch.expand"  # list an archive / URL file / bucket into its job's items
WEBHOOK_QUEUE = "webhooks"
WEBHOOK_TASK = "simsearch.webhook"


def celery_config(broker_url: str, visibility_timeout_s: int = 30, master_name: str = "mymaster") -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        # JSON only: a pickled message from anyone who can write to Redis would be code execution.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,  # job state lives in our own job records
        "result_expires": 3600,
        "task_default_queue": INDEX_QUEUE,
        "task_routes": {
            INDEX_CHUNK_TASK: {"queue": INDEX_QUEUE},
            REEMBED_CHUNK_TASK: {"queue": INDEX_QUEUE},
            CLUSTER_TASK: {"queue": INDEX_QUEUE},
            SEARCH_TASK: {"queue": SEARCH_QUEUE},
            SEARCH_DEADLINE_TASK: {"queue": DEADLINE_QUEUE},
            BATCH_DEADLINE_TASK: {"queue": DEADLINE_QUEUE},
            EXPAND_TASK: {"queue": INDEX_QUEUE},
            DUPLICATES_TASK: {"queue": INDEX_QUEUE},
            BATCH_CHUNK_TASK: {"queue": INDEX_QUEUE},
            WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE},
        },
        "broker_transport_options": {
            **broker_transport_options(visibility_timeout_s),
            **transport_options(broker_url, master_name),
        },
        "broker_connection_retry_on_startup": True,
    }


# Fair shares of the bulk queue (issue 21): a job's chunks carry a priority (0 first) that grows
# with how many jobs its owner already has open and with the chunk's place in the job, so one
# tenant's backlog sinks below another tenant's first chunks instead of queueing in front of them.
PRIORITY_STEPS = list(range(10))
FRONT_CHUNKS = 4  # chunks of a job at its owner's own level before the rest sinks a level at a time


def priority_queue(queue: str, priority: int) -> str:
    """The Redis list kombu keeps a queue's messages of one priority in (0: the queue's own name)."""
    return f"{queue}:{priority}" if priority else queue


def chunk_priority(open_jobs: int, chunk_number: int) -> int:
    """0 (first) to 9: the owner's open jobs, plus one per FRONT_CHUNKS chunks into the job."""
    return min(PRIORITY_STEPS[-1], max(0, open_jobs) + chunk_number // FRONT_CHUNKS)


def broker_transport_options(visibility_timeout_s: int) -> dict[str, Any]:
    """An unacknowledged message comes back after `visibility_timeout_s` unless its worker keeps
    refreshing it (`worker.upkeep.heartbeat`): a live worker keeps long tasks, a dead one's come back
    within about this long. kombu's defaults would sweep for them only every 100 s (interval x
    throttle) and let a crashed sweeper's lock block sweeps for 300 s (a sweep takes milliseconds).
    Delivery times are compared across hosts: keep the workers' clocks in sync (NTP)."""
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": max(1, visibility_timeout_s // 6),
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 10,
        # Message priorities on Redis: one list per step (`index`, `index:1` … `index:9`), read 0 first.
        "priority_steps": PRIORITY_STEPS,
        "sep": ":",
    }
