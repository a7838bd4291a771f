"""Cancelling a job (POST /v1/jobs/{id}/cancel): it ends at once as `failed` with `cancelled`, the
worker skips its chunks not yet started (their uploads deleted) and records the items of a chunk
already running, and the owner's places are free again. Real Redis, worker and API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import photo_bytes
from tests.integration.client_helpers import index, submit_images
from tests.integration.services import small_stack, wait_until

CHUNK = 32


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    workdir = tmp_path_factory.mktemp("cancel")
    with (
        small_stack(workdir, "canceller", INDEX_CHUNK_SIZE=str(CHUNK)) as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        yield client, workdir


def _handled(log: Path, job_id: str) -> tuple[int, int]:
    """(chunks indexed, chunks skipped) of the job, from the worker's JSON log."""
    indexed = skipped = 0
    for line in log.read_text().splitlines():
        if job_id not in line or not line.startswith("{"):
            continue
        message = json.loads(line).get("message", "")
        indexed += message == "indexed a chunk"
        skipped += "its task is skipped" in message
    return indexed, skipped


def test_a_cancelled_job_ends_at_once_and_its_queued_chunks_are_skipped(stack: tuple[httpx.Client, Path]) -> None:
    client, workdir = stack
    photos = [(f"c{i}.jpg", photo_bytes(45000 + i, size=(48, 40))) for i in range(8 * CHUNK)]
    job_id = submit_images(client, "cancel-me", photos)["job_id"]
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    view = cancelled.json()
    assert view["status"] == "failed" and view["result"] == {"error": "cancelled", "detail": "cancelled by request"}
    log = workdir / "worker-canceller.log"
    wait_until(lambda: sum(_handled(log, job_id)) == 8, 60, "every chunk message handled")
    indexed, skipped = _handled(log, job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    print(f"cancelled: {indexed} chunks indexed, {skipped} skipped; progress {job['progress']}")
    assert skipped >= 1 and job["status"] == "failed" and job["result"]["error"] == "cancelled"
    assert job["progress"]["done"] == indexed * CHUNK and job["progress"]["failed"] == 0  # a chunk runs whole
    assert client.get("/v1/collections/cancel-me").json()["image_count"] == indexed * CHUNK
    uploads = workdir / "blobs" / "uploads" / job_id
    assert not uploads.exists() or not any(uploads.iterdir())  # the skipped chunks' bytes are gone
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and again.json()["error"] == "job_ended"
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204


def test_only_open_jobs_of_ones_own_can_be_cancelled(stack: tuple[httpx.Client, Path]) -> None:
    client, _ = stack
    done = index(client, "cancel-done", [("d.jpg", photo_bytes(45999, size=(48, 40)))])
    ended = client.post(f"/v1/jobs/{done['job_id']}/cancel")
    assert ended.status_code == 409 and ended.json()["error"] == "job_ended"
    unknown = client.post(f"/v1/jobs/{'0' * 32}/cancel")
    assert unknown.status_code == 404 and unknown.json()["error"] == "job_not_found"
    assert client.delete(f"/v1/jobs/{done['job_id']}").status_code == 204
