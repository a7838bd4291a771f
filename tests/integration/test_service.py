"""The whole stack for real: redis-server, two Celery workers, the API over HTTP."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from shared.imaging import content_id
from tests.images import photo_bytes, reencode
from tests.integration.client_helpers import index, search_bytes, search_id, submit_images, wait_job
from tests.unit.test_imaging import _png_header_only


def _photos(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [(f"photo_{i:04d}.jpg", photo_bytes(i)) for i in range(start, start + n)]


def test_batch_index_then_search_by_bytes(client: httpx.Client, collection: str) -> None:
    photos = _photos(40, start=1000)
    accepted = submit_images(client, collection, photos)
    assert accepted["status_url"] == f"/v1/jobs/{accepted['job_id']}" and accepted["total"] == 40
    first = client.get(accepted["status_url"]).json()
    assert first["status"] in ("queued", "running", "succeeded") and first["progress"]["total"] == 40
    job = wait_job(client, accepted["job_id"])
    assert job["status"] == "succeeded", job["errors"]
    assert job["progress"] == {"total": 40, "done": 40, "failed": 0}
    assert job["result"]["created"] == [content_id(b) for _, b in photos]
    assert job["finished_at"] and job["created_at"] <= job["finished_at"]

    for name, data in photos[:3]:
        result = search_bytes(client, collection, data, k=5)["result"]
        assert len(result["matches"]) == 5
        top = result["matches"][0]
        assert top["image_id"] == content_id(data) and top["filename"] == name
        assert top["similarity"] > 0.999
        sims = [m["similarity"] for m in result["matches"]]
        assert sims == sorted(sims, reverse=True)


def test_200_photos_found_again_from_reencoded_copies(client: httpx.Client, collection: str) -> None:
    photos = _photos(200, start=2000)
    job = index(client, collection, photos)
    assert job["status"] == "succeeded" and job["progress"]["done"] == 200
    for name, data in photos[::20]:
        query = reencode(data, scale=0.8, quality=70)
        top = search_bytes(client, collection, query, k=3)["result"]["matches"][0]
        assert top["image_id"] == content_id(data), f"{name}: got {top}"


def test_search_by_stored_image_excludes_itself(client: httpx.Client, collection: str) -> None:
    photos = _photos(10, start=3000)
    index(client, collection, photos)
    target = content_id(photos[4][1])
    job = search_id(client, collection, target, k=20)
    matches = job["result"]["matches"]
    assert job["status"] == "succeeded" and len(matches) == 9
    assert target not in {m["image_id"] for m in matches}
    resp = client.post(f"/v1/collections/{collection}/search", json={"image_id": "0" * 32})
    assert resp.status_code == 404 and resp.json()["error"] == "image_not_found"


def test_delete_removes_image_from_every_worker(client: httpx.Client, collection: str) -> None:
    photos = _photos(8, start=4000)
    index(client, collection, photos)
    victim = photos[2][1]
    assert search_bytes(client, collection, victim)["result"]["matches"][0]["image_id"] == content_id(victim)
    resp = client.delete(f"/v1/collections/{collection}/images/{content_id(victim)}")
    assert resp.status_code == 204
    assert client.get(f"/v1/collections/{collection}/images/{content_id(victim)}").status_code == 404
    assert client.delete(f"/v1/collections/{collection}/images/{content_id(victim)}").status_code == 404
    with ThreadPoolExecutor(6) as pool:
        jobs = list(pool.map(lambda _: search_bytes(client, collection, victim, k=10), range(6)))
    for job in jobs:
        ids = [m["image_id"] for m in job["result"]["matches"]]
        assert content_id(victim) not in ids and len(ids) == 7
    assert client.get(f"/v1/collections/{collection}").json()["image_count"] == 7


def test_two_workers_both_see_a_finished_batch_at_once(client: httpx.Client, collection: str) -> None:
    first = _photos(6, start=5000)
    index(client, collection, first)
    # Warm both replicas, then add more: every later search must see the new images.
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: search_bytes(client, collection, first[i][1]), range(6)))
    more = _photos(30, start=5100)
    assert index(client, collection, more)["status"] == "succeeded"
    queries = (first + more)[::3]
    with ThreadPoolExecutor(8) as pool:
        jobs = list(pool.map(lambda item: search_bytes(client, collection, item[1], k=1), queries))
    served_by = set()
    for (_, data), job in zip(queries, jobs, strict=True):
        assert job["result"]["collection_size"] == 36
        assert job["result"]["matches"][0]["image_id"] == content_id(data)
        served_by.add(job["result"]["served_by"])
    assert len(served_by) == 2, served_by


def test_resubmitting_the_same_files_is_idempotent(client: httpx.Client, collection: str) -> None:
    photos = _photos(12, start=6000)
    first = index(client, collection, photos)
    again = index(client, collection, [*photos, ("dup.jpg", photos[0][1])])
    assert again["status"] == "succeeded"
    assert again["result"]["created"] == []
    assert again["result"]["existing"] == first["result"]["created"] + [content_id(photos[0][1])]
    assert client.get(f"/v1/collections/{collection}").json()["image_count"] == 12


def test_bad_files_fail_alone_and_workers_stay_up(client: httpx.Client, collection: str) -> None:
    good = _photos(3, start=7000)
    truncated = photo_bytes(7100)[:800]
    bad = [
        ("notes.jpg", b"this is a text file, not a jpeg\n"),
        ("empty.png", b""),
        ("truncated.jpg", truncated),
        ("bomb.png", _png_header_only(20000, 20000)),
        ("doc.jpg", b"%PDF-1.4\n%%EOF\n"),
        ("vector.jpg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'),
        ("sky.jpg", b"SIMPLE  =                    T" + b" " * 50 + b"BITPIX  =                    8"),
    ]
    job = index(client, collection, [good[0], *bad[:3], good[1], *bad[3:], good[2]])
    assert job["status"] == "partial"
    assert job["progress"] == {"total": 10, "done": 10, "failed": 7}
    assert job["result"]["created"] == [content_id(b) for _, b in good]
    reasons = {e["filename"]: e for e in job["errors"]}
    assert set(reasons) == {name for name, _ in bad}
    assert reasons["empty.png"]["detail"] == "empty file"
    assert "truncated" in reasons["truncated.jpg"]["detail"]
    assert "pixels" in reasons["bomb.png"]["detail"]
    assert all(e["error"] == "invalid_image" for e in job["errors"])
    # Both workers still answer.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: search_bytes(client, collection, good[1][1]), range(4)))
    assert all(r["result"]["matches"][0]["image_id"] == content_id(good[1][1]) for r in results)


def test_awkward_but_valid_images_are_indexed_as_a_person_sees_them(client: httpx.Client, collection: str) -> None:
    import numpy as np
    from PIL import Image

    from tests.images import encode, make_photo

    ramp = (np.arange(96 * 128, dtype=np.uint16).reshape(96, 128) * 5).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [make_photo(9400), make_photo(9401)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    files = [
        ("cmyk.jpg", encode(make_photo(9402).convert("CMYK"), "JPEG")),
        ("deep.png", encode(Image.fromarray(ramp), "PNG")),
        ("rotated.jpg", encode(make_photo(9403, size=(200, 100)), "JPEG", exif=exif.tobytes())),
        ("animated.gif", gif.getvalue()),
    ]
    job = index(client, collection, files)
    assert job["status"] == "succeeded", job["errors"]
    rotated = client.get(f"/v1/collections/{collection}/images/{content_id(files[2][1])}").json()
    assert (rotated["width"], rotated["height"]) == (100, 200)  # upright, as displayed
    thumb = Image.open(
        io.BytesIO(client.get(f"/v1/collections/{collection}/images/{content_id(files[2][1])}/content").content)
    )
    assert thumb.size == (100, 200)
    for _, data in files:
        assert search_bytes(client, collection, data, k=1)["result"]["matches"][0]["image_id"] == content_id(data)


def test_min_similarity_with_nothing_close_says_so(client: httpx.Client, collection: str) -> None:
    index(client, collection, _photos(5, start=8000))
    job = search_bytes(client, collection, photo_bytes(8999), k=5, min_similarity=0.99999)
    assert job["status"] == "succeeded"
    assert job["result"]["matches"] == []
    assert job["result"]["message"].startswith("No similar images found")


def test_collection_and_image_endpoints(client: httpx.Client, collection: str) -> None:
    photo = ("cat.jpg", photo_bytes(9000, size=(900, 600)))
    parts = [("files", (photo[0], photo[1], "image/jpeg"))]
    resp = client.post(
        f"/v1/collections/{collection}/images", files=parts, data={"metadata": '{"cat.jpg": {"label": "cat"}}'}
    )
    wait_job(client, resp.json()["job_id"])
    info = client.get(f"/v1/collections/{collection}").json()
    assert info["image_count"] == 1 and info["model"] == "resnet50" and info["dimension"] == 2048
    assert collection in [c["name"] for c in client.get("/v1/collections").json()]
    image_id = content_id(photo[1])
    record = client.get(f"/v1/collections/{collection}/images/{image_id}").json()
    assert record["filename"] == "cat.jpg" and record["metadata"] == {"label": "cat"}
    assert (record["width"], record["height"], record["format"]) == (900, 600, "JPEG")
    content = client.get(f"/v1/collections/{collection}/images/{image_id}/content")
    assert content.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(content.content)).size) >= 256


def test_long_poll_returns_when_the_job_finishes(client: httpx.Client, collection: str) -> None:
    index(client, collection, _photos(3, start=9100))
    resp = client.post(
        f"/v1/collections/{collection}/search", files={"file": ("q.jpg", photo_bytes(9100), "image/jpeg")}
    )
    started = time.monotonic()
    job = client.get(resp.json()["status_url"], params={"wait": 25}).json()
    assert job["status"] == "succeeded"
    assert time.monotonic() - started < 10
