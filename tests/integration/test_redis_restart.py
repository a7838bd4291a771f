"""Redis (AOF on) restarted in the middle of a batch: accepted jobs survive, the API answers 503
fast while Redis is away, and everything recovers by itself."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.images import photo_bytes
from tests.integration.client_helpers import submit_images, wait_job
from tests.integration.services import start_api, start_redis, start_worker


def test_restart_redis_during_a_batch(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir: Path = tmp_path_factory.mktemp("restart")
    redis_service, url = start_redis(workdir, appendonly=True)
    port = url.rsplit(":", 1)[1].split("/")[0]
    worker = start_worker(url, workdir, "survivor", TASK_TIME_LIMIT_S="10")
    api, base = start_api(url, workdir, REDIS_TIMEOUT_S="1")
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            files = [(f"r{i:03d}.jpg", photo_bytes(21000 + i, size=(64, 48))) for i in range(300)]
            job_id = submit_images(client, "restarted", files)["job_id"]
            _until(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] >= 30, 120, "30 done")
            redis_service.stop()  # SIGTERM: Redis flushes its append-only file and exits

            for path in ("/readyz", f"/v1/jobs/{job_id}", "/v1/collections"):
                started = time.monotonic()
                resp = client.get(path)
                assert resp.status_code == 503 and resp.json()["error"] == "redis_unavailable", path
                assert time.monotonic() - started < 2.0, path
            started = time.monotonic()
            refused = client.post("/v1/collections/restarted/images", files=[("files", ("x.jpg", files[0][1]))])
            assert refused.status_code == 503 and time.monotonic() - started < 5.0

            redis_service, _ = start_redis(workdir, appendonly=True, port=int(port))
            _until(lambda: client.get("/readyz").status_code == 200, 30, "the API back")  # by itself
            job = wait_job(client, job_id, timeout=240)
            assert job["status"] == "succeeded", job["errors"][:3]
            assert job["progress"] == {"total": 300, "done": 300, "failed": 0}
            assert client.get("/v1/collections/restarted").json()["image_count"] == 300
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()


def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["graceful", "kill"])
def test_redis_lost_mid_batch_with_default_settings_loses_no_chunk(
    tmp_path_factory: pytest.TempPathFactory, how: str
) -> None:
    """The probe's case: default settings, Redis stopped once some images are done and back 4 s
    later. A chunk in flight used to be dropped (Celery's retry publishes to the broker that is
    down), leaving the job `running` forever with images missing."""
    import signal

    workdir: Path = tmp_path_factory.mktemp(f"outage-{how}")
    redis_service, url = start_redis(workdir, appendonly=True)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    worker = start_worker(url, workdir, f"outage{how}")
    api, base = start_api(url, workdir)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            files = [(f"o{i:03d}.jpg", photo_bytes(23000 + i, size=(64, 48))) for i in range(300)]
            job_id = submit_images(client, "outage", files)["job_id"]
            _until(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] >= 50, 120, "50 done")
            redis_service.stop(signal.SIGTERM if how == "graceful" else signal.SIGKILL)
            time.sleep(4)
            redis_service, _ = start_redis(workdir, appendonly=True, port=port)
            restarted = time.monotonic()
            _until(lambda: client.get("/readyz").status_code == 200, 30, "the API back")
            job = wait_job(client, job_id, timeout=120)
            took = time.monotonic() - restarted
            progress = job["progress"]
            if how == "graceful":  # everything acknowledged was flushed: nothing is lost
                assert job["status"] == "succeeded", job["errors"][:3]
                assert progress == {"total": 300, "done": 300, "failed": 0}
                assert client.get("/v1/collections/outage").json()["image_count"] == 300
            else:  # the last second of writes may be gone: every item still ends, with a reason if failed
                assert job["status"] in ("succeeded", "partial") and progress["done"] == 300, job
                assert len(job["errors"]) == progress["failed"]
            assert took < 120
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()
