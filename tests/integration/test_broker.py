"""A broker of its own (issue 23): Celery's queues on a Redis apart from the data, or on a Redis
behind Sentinel that fails over mid-batch. Real servers on loopback, real workers and API."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared import keys
from tests.images import photo_bytes
from tests.integration.client_helpers import index, search_bytes
from tests.integration.failover import batch_through_a_kill, promotion_of, sentinel_group
from tests.integration.services import (
    Service,
    start_api,
    start_redis,
    start_worker,
)

MASTER = "simsearch-broker"


def test_queues_live_on_the_broker_and_data_on_redis_url(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_service, data_url = start_redis(data_dir)
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    broker_service, broker_url = start_redis(broker_dir)
    worker = start_worker(data_url, tmp_path, "own-broker", BROKER_URL=broker_url)
    api, base = start_api(data_url, tmp_path, BROKER_URL=broker_url)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            photos = [(f"b{i}.jpg", photo_bytes(41000 + i, size=(48, 40))) for i in range(3)]
            assert index(client, "own-broker", photos)["status"] == "succeeded"
            found = search_bytes(client, "own-broker", photos[0][1], k=1, min_similarity=0)
            assert found["status"] == "succeeded" and found["result"]["matches"]
            metrics = client.get("/metrics").text
            assert 'simsearch_queue_depth{queue="index"} 0.0' in metrics
        data, broker = redis.Redis.from_url(data_url), redis.Redis.from_url(broker_url)
        assert broker.exists("_kombu.binding.index") and broker.exists("_kombu.binding.search")
        assert not [k for k in data.scan_iter("_kombu*")] and not data.exists("unacked", "unacked_index")
        assert data.exists(keys.collection("own-broker")) and not [k for k in broker.scan_iter("ss:*")]
    finally:
        api.stop()
        worker.stop()
        broker_service.stop()
        data_service.stop()


@pytest.fixture
def sentinel_broker(tmp_path: Path) -> Iterator[tuple[str, Service, Service, int]]:
    with sentinel_group(tmp_path, MASTER) as group:
        yield group.url, group.primary, group.replicas[0], group.sentinel_port


def test_the_broker_fails_over_mid_batch_and_every_item_ends(
    tmp_path: Path, sentinel_broker: tuple[str, Service, Service, int]
) -> None:
    broker_url, primary, _, sentinel_port = sentinel_broker
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_service, data_url = start_redis(data_dir)
    env = {"BROKER_URL": broker_url, "BROKER_MASTER_NAME": MASTER}
    # A message only the dead primary held is re-sent by the watchdog once the job is quiet.
    worker = start_worker(data_url, tmp_path, "sentinel", JOB_STALL_S="15", WATCHDOG_INTERVAL_S="1", **env)
    api, base = start_api(data_url, tmp_path, **env)
    promoted = promotion_of(sentinel_port, MASTER)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            photos = [(f"s{i}.jpg", photo_bytes(42000 + i, size=(48, 40))) for i in range(300)]
            job, ended_s = batch_through_a_kill(
                client,
                "fail-over",
                photos,
                lambda: os.killpg(primary.proc.pid, signal.SIGKILL),  # the broker's primary dies mid-batch
                promoted,
            )
            print(f"broker primary killed at >= 40/300: job {job['status']} {job['progress']} {ended_s:.1f} s later")
            assert job["status"] == "succeeded" and job["progress"] == {"total": 300, "done": 300, "failed": 0}
            listing = client.get("/v1/collections/fail-over").json()
            assert listing["image_count"] == 300  # every image once
            # The API reaches the promoted broker too: a new job after the failover runs.
            after = index(client, "fail-over", [("late.jpg", photo_bytes(42999, size=(48, 40)))])
            assert after["status"] == "succeeded"
    finally:
        api.stop()
        worker.stop()
        data_service.stop()
