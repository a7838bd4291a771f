"""The claim-check pattern end to end on a real S3 server (SeaweedFS): uploads and renditions live
in the blob store, Redis holds no image bytes, processed uploads are deleted, a deleted image's
rendition goes with it, and a re-added image gets a rendition of its own."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
import redis
from PIL import Image

from shared import keys
from shared.imaging import content_id
from tests.images import photo_bytes
from tests.integration.client_helpers import index, search_bytes
from tests.integration.seaweed import ACCESS_KEY, REGION, SECRET_KEY, s3_client, start_seaweedfs
from tests.integration.services import start_api, start_redis, start_worker

BUCKET = "simsearch"


def _objects(endpoint: str, prefix: str) -> list[str]:
    listing = s3_client(endpoint).list_objects_v2(Bucket=BUCKET, Prefix=f"blobs/{prefix}")
    return [o["Key"] for o in listing.get("Contents", [])]


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    workdir = tmp_path_factory.mktemp("claimcheck")
    weed, endpoint = start_seaweedfs(workdir)
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    redis_service, url = start_redis(workdir)
    env = {
        "BLOB_STORE_URL": f"s3://{BUCKET}/blobs",
        "S3_ENDPOINT_URL": endpoint,
        "S3_REGION": REGION,
        "S3_ACCESS_KEY_ID": ACCESS_KEY,
        "S3_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    worker = start_worker(url, workdir, "s3", **env)
    api, base = start_api(url, workdir, **env)
    yield url, base, endpoint
    api.stop()
    worker.stop()
    redis_service.stop()
    weed.stop()


def _jpeg_bytes_in(client: redis.Redis) -> list[str]:
    """Keys whose string or hash values hold JPEG data (an image's bytes kept in Redis)."""
    found = []
    for raw in client.scan_iter(count=1000):
        kind = client.type(raw)
        values = client.hvals(raw) if kind == b"hash" else [client.get(raw)] if kind == b"string" else []
        if any(v and b"\xff\xd8\xff" in v for v in values):
            found.append(raw.decode())
    return found


def test_bytes_live_in_the_blob_store(s3_stack: tuple[str, str, str]) -> None:
    url, base, endpoint = s3_stack
    files = [(f"s{i}.jpg", photo_bytes(35000 + i, size=(600, 400))) for i in range(5)]
    with httpx.Client(base_url=base, timeout=60) as client:
        job = index(client, "pets", files)
        assert job["status"] == "succeeded"
        ids = job["result"]["created"]
        # Renditions in S3, one per image; processed uploads deleted; no image bytes in Redis.
        assert len(_objects(endpoint, "renditions/pets/")) == 5
        assert _objects(endpoint, "uploads/") == []
        r = redis.Redis.from_url(url)
        assert not r.exists(keys.thumbnails("pets", 0))
        assert not _jpeg_bytes_in(r), "image bytes found in Redis"
        content = client.get(f"/v1/collections/pets/images/{ids[0]}/content")
        assert content.status_code == 200 and content.content.startswith(b"\xff\xd8")
        assert max(Image.open(io.BytesIO(content.content)).size) == 512
        top = search_bytes(client, "pets", files[1][1])["result"]["matches"][0]
        assert top["image_id"] == content_id(files[1][1])
        assert _objects(endpoint, "uploads/") == []  # the query's upload too

        # Delete: the rendition goes; a re-add gets a fresh one and is served.
        assert client.delete(f"/v1/collections/pets/images/{ids[0]}").status_code == 204
        assert len(_objects(endpoint, "renditions/pets/")) == 4
        assert client.get(f"/v1/collections/pets/images/{ids[0]}/content").status_code == 404
        again = index(client, "pets", [files[0]])
        assert again["result"]["created"] == [ids[0]]
        assert client.get(f"/v1/collections/pets/images/{ids[0]}/content").status_code == 200
        assert len(_objects(endpoint, "renditions/pets/")) == 5

        # Re-embed reads the renditions from S3.
        reembed = client.post("/v1/collections/pets/reembed").json()
        done = client.get(f"/v1/jobs/{reembed['job_id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded" and done["result"]["dropped"] == []
