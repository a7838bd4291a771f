"""API keys with collection scopes, and the per-key rate limit shared across API replicas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.auth import hash_key
from shared.imaging import content_id
from tests.images import photo_bytes
from tests.integration.client_helpers import wait_job
from tests.integration.services import Service, start_api

ALICE, ADMIN = "ssk_alice_test_key", "ssk_admin_test_key"
KEYS = json.dumps(
    [
        {"name": "alice", "sha256": hash_key(ALICE), "collections": ["alice-*"]},
        {"name": "admin", "sha256": hash_key(ADMIN), "collections": ["*"]},
    ]
)


@pytest.fixture(scope="module")
def secured(redis_url: str, workdir: Path, workers: list[Service]) -> Iterator[str]:
    service, base = start_api(redis_url, workdir, API_KEYS=KEYS)
    yield base
    service.stop()


def _as(base: str, key: str | None, header: str = "authorization") -> httpx.Client:
    headers = {}
    if key:
        headers = {"authorization": f"Bearer {key}"} if header == "authorization" else {"x-api-key": key}
    return httpx.Client(base_url=base, headers=headers, timeout=60)


def test_keys_are_required_and_health_stays_open(secured: str) -> None:
    anonymous = _as(secured, None)
    assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/readyz").status_code == 200
    resp = anonymous.get("/v1/collections")
    assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"
    assert _as(secured, "ssk_wrong").get("/v1/collections").status_code == 401
    assert _as(secured, ALICE, header="x-api-key").get("/v1/collections").status_code == 200


def test_a_key_cannot_touch_another_tenants_collection(secured: str, collection: str) -> None:
    mine, theirs = f"alice-{collection}", f"bob-{collection}"
    alice, admin = _as(secured, ALICE), _as(secured, ADMIN)
    photo = photo_bytes(17000)
    for client, name in ((alice, mine), (admin, theirs)):
        resp = client.post(f"/v1/collections/{name}/images", files=[("files", ("a.jpg", photo, "image/jpeg"))])
        assert resp.status_code == 202
        wait_job(client, resp.json()["job_id"])
    bob_job = admin.post(f"/v1/collections/{theirs}/search", json={"image_id": content_id(photo)}).json()["job_id"]

    image = content_id(photo)
    forbidden = [
        alice.get(f"/v1/collections/{theirs}"),
        alice.get(f"/v1/collections/{theirs}/images/{image}"),
        alice.get(f"/v1/collections/{theirs}/images/{image}/content"),
        alice.post(f"/v1/collections/{theirs}/search", json={"image_id": image}),
        alice.post(f"/v1/collections/{theirs}/images", files=[("files", ("b.jpg", photo, "image/jpeg"))]),
        alice.delete(f"/v1/collections/{theirs}/images/{image}"),
        alice.get(f"/v1/collections/{theirs}/export"),
        alice.post(f"/v1/collections/{theirs}/clusters", json={}),
    ]
    for resp in forbidden:
        assert resp.status_code == 403 and resp.json()["error"] == "forbidden", resp.request.url
    # Another tenant's job answers exactly as an unknown one: nothing says whose it is or its kind.
    unknown = "0" * 32
    for path in ("/v1/jobs/{}", "/v1/jobs/{}?wait=1", "/v1/jobs/{}/results"):
        theirs_resp, unknown_resp = alice.get(path.format(bob_job)), alice.get(path.format(unknown))
        assert theirs_resp.status_code == unknown_resp.status_code == 404, path
        assert theirs_resp.json() == {
            **unknown_resp.json(),
            "detail": unknown_resp.json()["detail"].replace(unknown, bob_job),
        }
        assert theirs not in theirs_resp.text and "bob" not in theirs_resp.text
    names = {c["name"] for c in alice.get("/v1/collections").json()}
    assert mine in names and theirs not in names
    assert admin.get(f"/v1/collections/{theirs}/images/{image}").status_code == 200
    assert alice.get(f"/v1/collections/{mine}/images/{image}").status_code == 200


def test_rate_limit_is_shared_across_replicas(redis_url: str, workdir: Path, workers: list[Service]) -> None:
    limits = {"API_KEYS": KEYS, "RATE_LIMIT_PER_SECOND": "5"}
    first, base1 = start_api(redis_url, workdir, **limits)
    second, base2 = start_api(redis_url, workdir, **limits)
    try:
        clients = [_as(base1, ALICE), _as(base2, ALICE)]
        statuses, retry_after = [], set()
        for i in range(24):
            resp = clients[i % 2].get("/v1/collections")
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                retry_after.add(resp.headers.get("retry-after"))
                assert resp.json()["error"] == "rate_limited"
        # 24 requests in well under 2 s through two replicas: at most 5 per one-second window pass.
        assert statuses.count(200) <= 15 and statuses.count(429) >= 9, statuses
        assert retry_after == {"1"}
        assert _as(base1, ADMIN).get("/v1/collections").status_code == 200  # another key, its own budget
    finally:
        first.stop()
        second.stop()
