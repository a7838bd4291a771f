"""Keeps the task messages this worker holds from coming back to the queue while it lives.

The Redis transport restores a message whose delivery is older than the visibility timeout,
which must be short so that a dead worker's chunks return within seconds. A live worker's
messages (running or prefetched) are kept by refreshing their delivery time in kombu's
`unacked_index` every `interval_s`; when the worker dies the refreshes stop and its messages come
back after one timeout. Runs as a thread of the worker's main process, which holds the messages.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from celery.worker import state

from shared import keys
from shared.logs import RepeatedFailure

log = logging.getLogger(__name__)


def held_delivery_tags() -> list[str]:
    """Delivery tags of every request this process has received and not finished."""
    for _ in range(3):
        try:
            requests = list(state.requests.values())
            break
        except RuntimeError:  # the dict changed while we copied it; try again
            continue
    else:
        return []
    tags = []
    for request in requests:
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag:
            tags.append(tag)
    return tags


def refresh(client: redis.Redis, tags: list[str], now: float | None = None) -> int:
    """Move these deliveries' time to now; XX: never re-adds a message kombu has acked meanwhile."""
    if not tags:
        return 0
    now = time.time() if now is None else now
    return int(client.zadd(keys.CELERY_UNACKED_INDEX, dict.fromkeys(tags, now), xx=True, ch=True))


class Heartbeat(threading.Thread):
    def __init__(self, client: redis.Redis, interval_s: float) -> None:
        super().__init__(name="simsearch-heartbeat", daemon=True)
        self.client = client
        self.interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        wait = self.interval_s
        failures = RepeatedFailure(log, "the heartbeat (retrying every second)")
        while not self._stopped.wait(wait):
            try:
                refresh(self.client, held_delivery_tags())
                wait = self.interval_s
                failures.succeeded()
            except Exception as exc:  # the thread must outlive any error, or held tasks get redelivered
                failures.failed(exc)
                # Refresh as soon as Redis is back: other workers' sweeps resume at once too.
                wait = 1.0

    def stop(self) -> None:
        self._stopped.set()
