"""Reliability faults from the outside review, reproduced through the real stack (API, two Celery
workers, Redis): re-embed racing new images, the API's log cap, an all-failed batch, job ids."""

from __future__ import annotations

from pathlib import Path

import httpx

from shared import keys
from shared.imaging import content_id
from tests.images import photo_bytes
from tests.integration.client_helpers import index, search_bytes, submit_images, wait_job
from tests.integration.services import data_client, start_api


def test_reembed_while_images_arrive_loses_nothing(client: httpx.Client, collection: str) -> None:
    first = [(f"a{i}.jpg", photo_bytes(31000 + i, size=(64, 48))) for i in range(40)]
    later = [(f"b{i}.jpg", photo_bytes(32000 + i, size=(64, 48))) for i in range(64)]
    assert index(client, collection, first)["status"] == "succeeded"
    added = submit_images(client, collection, later)
    reembed = client.post(f"/v1/collections/{collection}/reembed")
    assert reembed.status_code == 202, reembed.text
    assert client.post(f"/v1/collections/{collection}/reembed").json()["error"] == "reembed_running"
    added_job = wait_job(client, added["job_id"])
    job = wait_job(client, reembed.json()["job_id"])
    assert added_job["status"] == "succeeded" and len(added_job["result"]["created"]) == 64
    assert job["status"] == "succeeded", job
    assert job["result"]["dropped"] == []
    assert client.get(f"/v1/collections/{collection}").json()["image_count"] == 104
    for _, data in later[:3] + first[:2]:
        top = search_bytes(client, collection, data, k=1)["result"]["matches"][0]
        assert top["image_id"] == content_id(data) and top["similarity"] > 0.99


def test_the_api_trims_the_log_with_the_configured_cap(
    client: httpx.Client, collection: str, redis_url: str, workdir: Path
) -> None:
    files = [(f"t{i}.jpg", photo_bytes(33000 + i, size=(32, 24))) for i in range(150)]
    assert index(client, collection, files)["status"] == "succeeded"
    api, base = start_api(redis_url, workdir, LOG_MAXLEN="5")
    try:
        with httpx.Client(base_url=base, timeout=60) as capped:
            for _, data in files:
                assert capped.delete(f"/v1/collections/{collection}/images/{content_id(data)}").status_code == 204
    finally:
        api.stop()
    # 300 entries were written; trimming works in whole nodes of 100, so a cap of 5 keeps < 300.
    assert data_client(redis_url).xlen(keys.log(collection, 0)) < 300


def test_a_batch_whose_files_all_fail_creates_no_collection(client: httpx.Client, collection: str) -> None:
    files = [("a.txt", b"not an image"), ("b.jpg", b"\xff\xd8 truncated")]
    job = wait_job(client, submit_images(client, collection, files)["job_id"])
    assert job["status"] == "failed"
    assert client.get(f"/v1/collections/{collection}").status_code == 404
    assert collection not in [c["name"] for c in client.get("/v1/collections").json()]


def test_job_ids_are_validated(client: httpx.Client) -> None:
    for bad in ("x", "0" * 32 + ":inputs", "A" * 32, "0" * 33):
        resp = client.get(f"/v1/jobs/{bad}")
        assert resp.status_code == 404 and resp.json()["error"] == "job_not_found", (bad, resp.text)
        assert client.get(f"/v1/jobs/{bad}", params={"wait": 1}).status_code == 404


def test_served_content_carries_no_exif_or_trailing_bytes(client: httpx.Client, collection: str) -> None:
    import io

    from PIL import Image

    from tests.images import make_photo

    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPS position
    out = io.BytesIO()
    make_photo(34000, size=(200, 150)).save(out, format="JPEG", exif=exif.tobytes(), comment=b"secret")
    data = out.getvalue() + b"TRAILING-SECRET" * 10
    image_id = index(client, collection, [("gps.jpg", data)])["result"]["created"][0]
    resp = client.get(f"/v1/collections/{collection}/images/{image_id}/content")
    assert resp.status_code == 200
    served = resp.content
    assert b"Exif" not in served and b"secret" not in served and b"TRAILING" not in served
    assert served.endswith(b"\xff\xd9")
    assert not Image.open(io.BytesIO(served)).getexif()
