"""The data Redis loses its primary mid-batch and nothing acknowledged is lost (issue 23): the data
behind Sentinel (REDIS_URL=sentinel://…) with two replicas, adds acknowledged only once a replica
holds them (REDIS_WAIT_REPLICAS=1), the primary killed with SIGKILL while 300 images are indexed.
Real servers on loopback, a real worker and API; the broker is a Redis of its own."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from tests.images import photo_bytes
from tests.integration.client_helpers import search_bytes
from tests.integration.failover import batch_through_a_kill, promotion_of, sentinel_group
from tests.integration.services import start_api, start_redis, start_worker

MASTER = "simsearch-data"


def test_the_primary_dies_mid_batch_and_every_acknowledged_image_is_there(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    with sentinel_group(tmp_path, MASTER, replicas=2) as data:
        broker, broker_url = start_redis(tmp_path / "broker")
        env = {
            "REDIS_MASTER_NAME": MASTER,
            "BROKER_URL": broker_url,
            "REDIS_WAIT_REPLICAS": "1",
            "JOB_STALL_S": "15",
            "WATCHDOG_INTERVAL_S": "1",
        }
        worker = start_worker(data.url, tmp_path, "failover", **env)
        api, base = start_api(data.url, tmp_path, **env)
        promoted = promotion_of(data.sentinel_port, MASTER)
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                photos = [(f"d{i}.jpg", photo_bytes(44000 + i, size=(48, 40))) for i in range(300)]
                job, ended_s = batch_through_a_kill(
                    client,
                    "survives",
                    photos,
                    lambda: os.killpg(data.primary.proc.pid, signal.SIGKILL),
                    promoted,
                    timeout=120,
                )
                print(f"data primary killed at >= 40/300: job {job['status']} {job['progress']} {ended_s:.1f} s later")
                assert job["status"] == "succeeded" and job["progress"] == {"total": 300, "done": 300, "failed": 0}
                assert ended_s < 60, f"{ended_s:.1f} s after the kill\n{data.story(worker, api)}"
                count = client.get("/v1/collections/survives").json()["image_count"]
                # None lost, none twice; else what Sentinel chose and what the nodes hold.
                assert count == 300, f"{count} of 300 after the failover\n{data.story(worker, api)}"
                ids: list[str] = []
                for offset in range(0, 300, 100):
                    page = client.get("/v1/collections/survives/images", params={"offset": offset, "limit": 100}).json()
                    ids += [i["image_id"] for i in page["images"]]
                assert len(ids) == len(set(ids)) == 300
                for name, image in photos[:40:13]:  # images acknowledged before the kill are searchable
                    found = search_bytes(client, "survives", image, k=1, min_similarity=0)
                    assert found["result"]["matches"][0]["filename"] == name
        finally:
            api.stop()
            worker.stop()
            broker.stop()
