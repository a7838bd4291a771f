"""Runs after the other integration tests (marked `runs_last`, which conftest orders last): every
key they left that is not data, not the broker's own bookkeeping and not a lifetime metric must
carry a TTL."""

from __future__ import annotations

import pytest
import redis

from shared import keys
from shared.queueing import INDEX_QUEUE, PRIORITY_STEPS, SEARCH_QUEUE

DATA_PREFIXES = ("ss:c:",)
DATA_KEYS = {"ss:collections", "ss:seq"}
METRIC_KEYS = {"ss:metrics:jobs"}  # Prometheus counters: they must outlive any job
# Celery's queues, each with its priority lists (`index:1` … `index:9`), and kombu's bookkeeping.
BROKER = {f"{q}:{p}" for q in (INDEX_QUEUE, SEARCH_QUEUE) for p in PRIORITY_STEPS[1:]}
BROKER |= {INDEX_QUEUE, SEARCH_QUEUE, "unacked", "unacked_index", "unacked_mutex"}
# Our own queues: due callbacks leave when settled; open jobs when they finish, or when the
# watchdog finds them expired.
QUEUES = {keys.WEBHOOKS_DUE, keys.OPEN_JOBS}


@pytest.mark.runs_last
def test_no_temporary_key_lacks_a_ttl(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    checked, missing = 0, []
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        if key in DATA_KEYS or key.startswith(DATA_PREFIXES) or key in METRIC_KEYS:
            continue
        if key in BROKER or key in QUEUES or key.startswith("_kombu."):
            continue
        checked += 1
        if client.ttl(key) < 0:
            missing.append(key)
    assert checked > 0, "nothing was checked: did the other integration tests run?"
    assert missing == [], missing
