"""EfficientNet-Lite2 through the service: real ImageNet weights from its pip package, a collection
of the 48 shipped photos (cats, dogs, pandas), searched by upload and by stored id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import unrelated_images
from tests.integration.client_helpers import index, search_bytes, search_id
from tests.integration.services import small_stack

ROOT = Path(__file__).parents[2]
PHOTOS = ROOT / "shared" / "models" / "calibration"
DATA = ROOT / "tests" / "data"
ENV = {"EMBEDDING_MODEL": "efficientnet-lite2", "EMBEDDING_WEIGHTS": "imagenet", "RATE_LIMIT_PER_SECOND": "0"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    stack = small_stack(tmp_path_factory.mktemp("lite2"), "lite2", ready_timeout=600, **ENV)
    with stack as base, httpx.Client(base_url=base, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def animals(client: httpx.Client) -> dict[str, str]:
    photos = [(p.name, p.read_bytes()) for p in sorted(PHOTOS.glob("*.jpg"))]
    job = index(client, "animals", photos)
    assert job["status"] == "succeeded", job["errors"][:3]
    return {item["filename"]: item["image_id"] for item in job["result"]["items"]}


def test_the_collection_records_lite2(client: httpx.Client, animals: dict) -> None:
    info = client.get("/v1/collections/animals").raise_for_status().json()
    assert (info["model"], info["dimension"], info["image_count"]) == ("efficientnet-lite2", 1280, 48)


@pytest.mark.parametrize(
    ("photo", "kind"), [("tabby_cat.jpg", "cats"), ("labrador_puppy.jpg", "dogs"), ("giant_panda.jpg", "panda")]
)
def test_an_unseen_photo_finds_its_kind(client: httpx.Client, animals: dict, photo: str, kind: str) -> None:
    data = (DATA / photo).read_bytes()
    ranked = search_bytes(client, "animals", data, k=5, min_similarity=-1)["result"]
    assert ranked["model"] == "efficientnet-lite2"
    names = [m["filename"] for m in ranked["matches"]]
    assert len(names) == 5 and all(n.startswith(kind) for n in names), names
    # With the default (calibrated) threshold the best of them are still answered.
    answered = search_bytes(client, "animals", data, k=5)["result"]["matches"]
    assert answered and [m["filename"] for m in answered] == names[: len(answered)]


def test_search_by_stored_id_ranks_its_own_kind_first(client: httpx.Client, animals: dict) -> None:
    precisions = []
    for name, image_id in animals.items():
        matches = search_id(client, "animals", image_id, k=5, min_similarity=-1)["result"]["matches"]
        assert image_id not in [m["image_id"] for m in matches]
        precisions.append(sum(m["filename"].split("_")[0] == name.split("_")[0] for m in matches) / 5)
    # 16 photos a kind, 15 others to find: Lite2 gets nearly all of the top 5 right.
    assert sum(precisions) / len(precisions) >= 0.95, precisions


def test_noise_answers_no_similar_images(client: httpx.Client, animals: dict) -> None:
    for kind, data in unrelated_images(1, seed=3):
        result = search_bytes(client, "animals", data)["result"]
        assert result["matches"] == [], (kind, result)
        # The collection's own threshold, or the model's floor where that is higher.
        assert result["threshold"]["source"] in ("collection", "model")
        assert result["threshold"]["value"] >= 0.48
