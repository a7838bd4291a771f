"""A worker started after 5,000 images were indexed answers exactly like the one that was there."""

from __future__ import annotations

import httpx
import pytest

from tests.images import photo_bytes
from tests.integration.client_helpers import search_bytes, submit_images, wait_job
from tests.integration.services import start_api, start_redis, start_worker


def test_late_worker_rebuilds_the_same_replica(tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("late")
    redis_service, url = start_redis(workdir)
    early = start_worker(url, workdir, "early")
    api, base = start_api(url, workdir)
    late = None
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            jobs = []
            for start in range(0, 5000, 1000):
                files = [(f"i{n:05d}.jpg", photo_bytes(30000 + n, size=(48, 36))) for n in range(start, start + 1000)]
                jobs.append(submit_images(client, "late", files)["job_id"])
            for job_id in jobs:
                assert wait_job(client, job_id, timeout=600)["status"] == "succeeded"
            client.delete(f"/v1/collections/late/images/{_id(30007)}")  # a delete must not come back
            queries = [photo_bytes(30000 + n, size=(48, 36)) for n in (3, 7, 1500, 4999)] + [photo_bytes(39999)]
            before = [search_bytes(client, "late", q, k=10)["result"] for q in queries]
            assert {r["served_by"] for r in before} == {f"early@{_host(before)}"}

            late = start_worker(url, workdir, "late")
            early.stop()
            after = [search_bytes(client, "late", q, k=10)["result"] for q in queries]
            assert {r["served_by"].split("@")[0] for r in after} == {"late"}
            for old, new in zip(before, after, strict=True):
                assert new["collection_size"] == old["collection_size"] == 4999
                assert [m["image_id"] for m in new["matches"]] == [m["image_id"] for m in old["matches"]]
                for a, b in zip(old["matches"], new["matches"], strict=True):
                    assert abs(a["similarity"] - b["similarity"]) <= 1e-6
            assert _id(30007) not in {m["image_id"] for r in after for m in r["matches"]}
    finally:
        api.stop()
        early.stop()
        if late is not None:
            late.stop()
        redis_service.stop()


def _id(seed: int) -> str:
    from shared.imaging import content_id

    return content_id(photo_bytes(seed, size=(48, 36)))


def _host(results: list[dict]) -> str:
    return results[0]["served_by"].split("@", 1)[1]
