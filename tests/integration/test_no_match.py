"""The calibrated "no similar images" default through the service (issue 20): real Lite0 weights,
a collection of the shipped cat and panda photos; noise, plain colours, gradients, text and
drawings answer "No similar images found" with no min_similarity given, while photos of a cat and
a panda the collection has never seen keep their matches. An explicit min_similarity wins."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import unrelated_images
from tests.integration.client_helpers import index, search_bytes, search_id, wait_job
from tests.integration.services import small_stack

ROOT = Path(__file__).parents[2]
PHOTOS = ROOT / "shared" / "models" / "calibration"
DATA = ROOT / "tests" / "data"
ENV = {"EMBEDDING_MODEL": "efficientnet-lite0", "EMBEDDING_WEIGHTS": "imagenet", "RATE_LIMIT_PER_SECOND": "0"}


def _photos(*kinds: str) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for kind in kinds for p in sorted(PHOTOS.glob(f"{kind}_*.jpg"))]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with small_stack(tmp_path_factory.mktemp("no-match"), "nomatch", **ENV) as api_base:
        yield api_base


@pytest.fixture(scope="module")
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def pets(client: httpx.Client) -> dict[str, str]:
    """Collection `pets`: the 32 shipped cat and panda photos (no dogs). File name -> image id."""
    job = index(client, "pets", _photos("cats", "panda"))
    assert job["status"] == "succeeded", job["errors"][:3]
    return {item["filename"]: item["image_id"] for item in job["result"]["items"]}


@pytest.mark.parametrize("kind", ["noise", "colour", "gradient", "text", "drawing"])
def test_unrelated_images_answer_no_similar_images_by_default(client: httpx.Client, pets: dict, kind: str) -> None:
    for _, data in [u for u in unrelated_images(2, seed=7) if u[0] == kind]:
        result = search_bytes(client, "pets", data)["result"]
        threshold = result["threshold"]
        assert result["matches"] == [], (kind, result)
        assert threshold["source"] == "collection" and threshold["sample"] == 32
        assert 0.4 < threshold["value"] < 0.9
        assert result["message"].startswith("No similar images found (the closest had 0.")
        assert 0 < result["closest"] < threshold["value"]  # the best there was, as a number too
        assert f"below the threshold {threshold['value']:.3f}: calibrated on this collection" in result["message"]


@pytest.mark.parametrize(("photo", "kind"), [("tabby_cat.jpg", "cats"), ("giant_panda.jpg", "panda")])
def test_photos_like_the_collections_keep_their_matches(
    client: httpx.Client, pets: dict, photo: str, kind: str
) -> None:
    result = search_bytes(client, "pets", (DATA / photo).read_bytes())["result"]
    assert result["matches"], result
    assert result["matches"][0]["filename"].startswith(kind)
    assert all(m["similarity"] >= result["threshold"]["value"] for m in result["matches"])
    assert "message" not in result


def test_an_explicit_min_similarity_wins_and_zero_turns_it_off(client: httpx.Client, pets: dict) -> None:
    noise = unrelated_images(1)[0][1]
    off = search_bytes(client, "pets", noise, k=5, min_similarity=0)["result"]
    assert len(off["matches"]) == 5 and "threshold" not in off and "message" not in off
    low = search_bytes(client, "pets", noise, k=5, min_similarity=0.05)["result"]
    assert len(low["matches"]) == 5 and low["threshold"] == {"value": 0.05, "source": "request"}
    high = search_bytes(client, "pets", (DATA / "tabby_cat.jpg").read_bytes(), min_similarity=0.99)["result"]
    assert high["matches"] == [] and "the min_similarity asked for" in high["message"]


def test_search_by_a_stored_image_uses_the_same_threshold(client: httpx.Client, pets: dict) -> None:
    result = search_id(client, "pets", pets["cats_00.jpg"])["result"]
    assert result["threshold"]["source"] == "collection"
    assert result["matches"] and all(m["similarity"] >= result["threshold"]["value"] for m in result["matches"])


def test_batch_rows_say_no_similar_images_like_a_search(client: httpx.Client, pets: dict) -> None:
    queries = [("noise.png", unrelated_images(1)[0][1]), ("cat.jpg", (DATA / "tabby_cat.jpg").read_bytes())]
    files = [("files", (name, data, "application/octet-stream")) for name, data in queries]
    resp = client.post("/v1/collections/pets/search/batch", params={"k": 5}, files=files)
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "succeeded", job
    rows = [json.loads(x) for x in client.get(f"/v1/jobs/{job['job_id']}/results?format=jsonl").text.splitlines()]
    noise, cat = rows
    assert noise["matches"] == [] and noise["message"].startswith("No similar images found (the closest had")
    assert 0 < noise["closest"] < noise["threshold"]["value"] and "closest" not in cat
    assert noise["threshold"]["source"] == "collection" and cat["threshold"] == noise["threshold"]
    assert cat["matches"][0]["filename"].startswith("cats") and "message" not in cat


def test_a_collection_too_small_to_calibrate_uses_the_models_floor(client: httpx.Client) -> None:
    job = index(client, "few", _photos("cats")[:5])
    assert job["status"] == "succeeded"
    noise = search_bytes(client, "few", unrelated_images(1)[0][1])["result"]
    assert noise["matches"] == [] and noise["threshold"] == {"value": 0.4, "source": "model"}
    assert "the model's floor for unrelated images" in noise["message"]
    cat = search_bytes(client, "few", (DATA / "tabby_cat.jpg").read_bytes())["result"]
    assert cat["matches"] and cat["threshold"]["source"] == "model"


def test_a_sharded_collection_applies_its_shards_highest_threshold(client: httpx.Client) -> None:
    assert client.put("/v1/collections/sharded-pets", json={"shards": 2}).status_code == 201
    job = index(client, "sharded-pets", _photos("cats", "panda", "dogs"))
    assert job["status"] == "succeeded"
    noise = search_bytes(client, "sharded-pets", unrelated_images(1)[0][1])["result"]
    assert noise["matches"] == [] and noise["shards"] == 2 and 0 < noise["closest"] < noise["threshold"]["value"]
    assert noise["threshold"]["source"] in ("collection", "model")
    assert noise["message"].startswith("No similar images found (the closest had")
    panda = search_bytes(client, "sharded-pets", (DATA / "giant_panda.jpg").read_bytes())["result"]
    assert panda["matches"][0]["filename"].startswith("panda")
    assert all(m["similarity"] >= noise["threshold"]["value"] for m in panda["matches"])


def test_the_cli_says_no_similar_images_with_the_threshold(base: str, pets: dict, tmp_path: Path) -> None:
    query = tmp_path / "noise.png"
    query.write_bytes(unrelated_images(1)[0][1])
    cmd = [sys.executable, "-m", "simsearch_client", "search", "-c", "pets", str(query), "--url", base]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("No similar images found (the closest had 0.")
    assert "calibrated on this collection" in done.stdout


def test_cli_batch_json_is_json_lines_only(base: str, pets: dict, tmp_path: Path) -> None:
    (tmp_path / "a-noise.png").write_bytes(unrelated_images(1)[0][1])
    (tmp_path / "b-cat.jpg").write_bytes((DATA / "tabby_cat.jpg").read_bytes())
    cmd = [sys.executable, "-m", "simsearch_client", "search", "--batch", str(tmp_path), "-c", "pets", "--json"]
    done = subprocess.run([*cmd, "--url", base], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]  # every stdout line is a JSON row
    assert [r["query"] for r in rows] == ["a-noise.png", "b-cat.jpg"]
    assert rows[0]["matches"] == [] and rows[0]["message"].startswith("No similar images found")
    assert rows[1]["matches"][0]["filename"].startswith("cats")
    assert "succeeded: 2 queries, 0 failed" in done.stderr
