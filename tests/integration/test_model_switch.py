"""Switching models: a collection built with one model is refused (409) by a deployment running
another until it is re-embedded; the re-embed job swaps every vector at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.imaging import content_id
from tests.images import photo_bytes
from tests.integration.client_helpers import index, search_bytes, submit_images, wait_job
from tests.integration.services import ON_CLUSTER, data_store, start_api, start_worker


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path_factory.mktemp("switch")
    with data_store(workdir, ON_CLUSTER) as url:
        yield url, workdir


def test_model_mismatch_then_reembed(own_redis: tuple[str, Path]) -> None:
    url, workdir = own_redis
    photos = [(f"p{i}.jpg", photo_bytes(12000 + i)) for i in range(6)]

    worker = start_worker(url, workdir, "resnet")
    api, base = start_api(url, workdir)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            assert index(client, "zoo", photos)["status"] == "succeeded"
    finally:
        api.stop()
        worker.stop()

    # Real (pip-shipped) weights: the vectors are re-made from 512 px renditions, and random
    # weights are too weak to match those to the original bytes.
    worker = start_worker(
        url,
        workdir,
        "lite",
        EMBEDDING_MODEL="efficientnet-lite0",
        EMBEDDING_WEIGHTS="imagenet",
        SIMSEARCH_CACHE_DIR=str(workdir / "cache"),
    )
    api, base = start_api(url, workdir, EMBEDDING_MODEL="efficientnet-lite0")
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            refused = client.post(
                "/v1/collections/zoo/images", files=[("files", ("new.jpg", photo_bytes(12100), "image/jpeg"))]
            )
            assert refused.status_code == 409 and refused.json()["error"] == "model_mismatch"
            assert "reembed" in refused.json()["detail"]
            search = client.post("/v1/collections/zoo/search", files={"file": ("q.jpg", photos[0][1], "image/jpeg")})
            assert search.status_code == 409

            accepted = client.post("/v1/collections/zoo/reembed")
            assert accepted.status_code == 202
            job = wait_job(client, accepted.json()["job_id"])
            assert job["type"] == "reembed" and job["status"] == "succeeded"
            assert job["result"]["model"] == "efficientnet-lite0" and job["result"]["reembedded"] == 6
            assert job["result"]["dropped"] == []
            info = client.get("/v1/collections/zoo").json()
            assert (info["model"], info["dimension"], info["image_count"]) == ("efficientnet-lite0", 1280, 6)

            for _, data in photos[:3]:
                top = search_bytes(client, "zoo", data, k=2)["result"]["matches"][0]
                assert top["image_id"] == content_id(data) and top["similarity"] > 0.98
            job = wait_job(client, submit_images(client, "zoo", [("new.jpg", photo_bytes(12100))])["job_id"])
            assert job["status"] == "succeeded" and client.get("/v1/collections/zoo").json()["image_count"] == 7
            empty = client.post("/v1/collections/nothing-here/reembed")
            assert empty.status_code == 404
    finally:
        api.stop()
        worker.stop()
