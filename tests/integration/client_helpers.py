"""Small helpers the integration tests share: submit, wait, search."""

from __future__ import annotations

import time
from typing import Any

import httpx


def submit_images(client: httpx.Client, collection: str, files: list[tuple[str, bytes]], **data: str) -> dict:
    parts = [("files", (name, body, "application/octet-stream")) for name, body in files]
    resp = client.post(f"/v1/collections/{collection}/images", files=parts, data=data or None)
    assert resp.status_code == 202, resp.text
    return resp.json()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 240) -> dict[str, Any]:
    waited = 0.0
    while True:
        resp = client.get(f"/v1/jobs/{job_id}", params={"wait": 10})
        assert resp.status_code == 200, resp.text
        job = resp.json()
        if job["status"] in ("succeeded", "partial", "failed"):
            return job
        waited += 10
        assert waited < timeout, f"job {job_id} still {job['status']}: {job['progress']}"


def wait_progress(client: httpx.Client, job_id: str, done: int, timeout: float = 120) -> None:
    """Until `done` items of the job are done (a fault is then injected mid-job)."""
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] < done:
        assert time.monotonic() < deadline, f"job {job_id} did not reach {done} items done"
        time.sleep(0.2)


def index(client: httpx.Client, collection: str, files: list[tuple[str, bytes]]) -> dict[str, Any]:
    return wait_job(client, submit_images(client, collection, files)["job_id"])


def search_bytes(client: httpx.Client, collection: str, data: bytes, **params: Any) -> dict[str, Any]:
    resp = client.post(
        f"/v1/collections/{collection}/search", params=params, files={"file": ("q.jpg", data, "image/jpeg")}
    )
    assert resp.status_code == 202, resp.text
    return wait_job(client, resp.json()["job_id"])


def search_id(client: httpx.Client, collection: str, image_id: str, **params: Any) -> dict[str, Any]:
    resp = client.post(f"/v1/collections/{collection}/search", params=params, json={"image_id": image_id})
    assert resp.status_code == 202, resp.text
    return wait_job(client, resp.json()["job_id"])
