"""The data Redis loses its primary mid-batch and nothing acknowledged is lost (issue 23): the data
behind Sentinel (REDIS_URL=sentinel://…) with two replicas, adds acknowledged only once a replica
holds them (REDIS_WAIT_REPLICAS=1), the primary killed with SIGKILL while 300 images are indexed.
Real servers on loopback, a real worker and API; the broker is a Redis of its own."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import redis
from redis.sentinel import Sentinel

from tests.images import photo_bytes
from tests.integration.client_helpers import search_bytes, submit_images, wait_job, wait_progress
from tests.integration.services import (
    port_of,
    start_api,
    start_redis,
    start_sentinel,
    start_worker,
    wait_until,
)

MASTER = "simsearch-data"


def test_the_primary_dies_mid_batch_and_every_acknowledged_image_is_there(tmp_path: Path) -> None:
    dirs = {name: tmp_path / name for name in ("primary", "replica1", "replica2", "broker")}
    for folder in dirs.values():
        folder.mkdir()
    primary, primary_url = start_redis(dirs["primary"], appendonly=True)
    replicas = [start_redis(dirs[f"replica{i}"], appendonly=True) for i in (1, 2)]
    for _, url in replicas:
        redis.Redis.from_url(url).replicaof("127.0.0.1", port_of(primary_url))
    wait_until(lambda: redis.Redis.from_url(primary_url).info("replication")["connected_slaves"] >= 2, 15, "replicas")
    sentinel_service, sentinel_port = start_sentinel(tmp_path, MASTER, port_of(primary_url))
    broker, broker_url = start_redis(dirs["broker"])
    env = {
        "REDIS_MASTER_NAME": MASTER,
        "BROKER_URL": broker_url,
        "REDIS_WAIT_REPLICAS": "1",
        "JOB_STALL_S": "15",
        "WATCHDOG_INTERVAL_S": "1",
    }
    data_url = f"sentinel://127.0.0.1:{sentinel_port}"
    worker = start_worker(data_url, tmp_path, "failover", **env)
    api, base = start_api(data_url, tmp_path, **env)
    sentinel = Sentinel([("127.0.0.1", sentinel_port)])
    first = sentinel.discover_master(MASTER)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            photos = [(f"d{i}.jpg", photo_bytes(44000 + i, size=(48, 40))) for i in range(300)]
            job_id = submit_images(client, "survives", photos)["job_id"]
            wait_progress(client, job_id, 40)
            os.killpg(primary.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: sentinel.discover_master(MASTER) != first, 30, "sentinel promoted a replica")
            job = wait_job(client, job_id, timeout=120)
            ended_s = time.monotonic() - killed
            print(f"data primary killed at >= 40/300: job {job['status']} {job['progress']} {ended_s:.1f} s later")
            assert job["status"] == "succeeded" and job["progress"] == {"total": 300, "done": 300, "failed": 0}
            assert ended_s < 60
            assert client.get("/v1/collections/survives").json()["image_count"] == 300  # none lost, none twice
            ids: list[str] = []
            for offset in range(0, 300, 100):
                page = client.get("/v1/collections/survives/images", params={"offset": offset, "limit": 100}).json()
                ids += [i["image_id"] for i in page["images"]]
            assert len(ids) == len(set(ids)) == 300
            for name, data in photos[:40:13]:  # images acknowledged before the kill are searchable
                found = search_bytes(client, "survives", data, k=1, min_similarity=0)
                assert found["result"]["matches"][0]["filename"] == name
    finally:
        api.stop()
        worker.stop()
        broker.stop()
        sentinel_service.stop()
        for service, _ in replicas:
            service.stop()
