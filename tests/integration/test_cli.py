"""The `simsearch` command against the real stack (redis-server, two Celery workers, the API)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest
import redis

from shared import keys
from shared.imaging import content_id
from simsearch_client import SimsearchClient
from simsearch_client.cli import main
from tests.images import photo_bytes
from tests.integration.services import ROOT, free_port

GOOD = {
    "a.jpg": photo_bytes(11_000),
    "b.png": photo_bytes(11_001, "PNG"),
    "sub/c.jpg": photo_bytes(11_002),
    "sub/deeper/d.webp": photo_bytes(11_003, "WEBP"),
}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def run(capsys: pytest.CaptureFixture[str], api_url: str, *args: str) -> tuple[int, str, str]:
    """The CLI in-process: exit code, stdout, stderr."""
    capsys.readouterr()  # drop anything printed before
    code = main(["--url", api_url, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def index_job_ids(redis_client: redis.Redis, collection: str) -> set[str]:
    """Index jobs recorded for this collection (the records live in `ss:job:{id}` hashes)."""
    ids = set()
    for key in redis_client.scan_iter(keys.job("*")):
        job_id = key.decode().removeprefix(keys.job(""))
        if ":" in job_id:  # the job's inputs, items, errors...: not the record itself
            continue
        if redis_client.hmget(key, "type", "collection") == [b"index", collection.encode()]:
            ids.add(job_id)
    return ids


@pytest.fixture(scope="module")
def indexed(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A collection indexed once through the CLI, shared by the read-only tests below."""
    name = f"cli-{uuid.uuid4().hex[:10]}"
    root = write_tree(tmp_path_factory.mktemp("photos"), GOOD)
    assert main(["--url", api_url, "index", str(root), "--collection", name]) == 0
    return name, root


# -- index ---------------------------------------------------------------------------------------


def test_index_folder_reports_bad_files_then_resumes_without_uploading(
    capsys: pytest.CaptureFixture[str],
    api_url: str,
    client: httpx.Client,
    redis_client: redis.Redis,
    collection: str,
    tmp_path: Path,
) -> None:
    root = write_tree(
        tmp_path,
        {
            **GOOD,
            "bad.jpg": b"this is a text file, not a jpeg\n",  # caught locally by its magic bytes
            "sub/truncated.jpg": photo_bytes(11_004)[:800],  # looks like a JPEG: the server fails it
            "notes.txt": b"not an image, and not named like one\n",
        },
    )
    code, out, err = run(capsys, api_url, "index", str(root), "-c", collection, "--chunk", "2", "--concurrency", "2")
    assert code == 1, (out, err)
    found = "found 5 images (ignored 1 file without an image extension; 1 file with an image extension but not image"
    assert found + " content)" in out
    assert "skipped 0 already indexed; uploading 5 in 3 requests" in out
    assert "done: 4 new, 0 already present on the server, 2 files failed" in out
    failed = {line.split(": ", 1)[0].strip(): line.split(": ", 1)[1] for line in err.splitlines() if ": " in line}
    assert failed[str(root / "bad.jpg")].startswith("not an image")
    assert failed[str(root / "sub" / "truncated.jpg")].startswith("invalid_image: ")
    assert "notes.txt" not in err
    assert client.get(f"/v1/collections/{collection}").json()["image_count"] == 4
    ids = [content_id(data) for data in GOOD.values()]
    assert set(SimsearchClient(api_url).lookup(collection, ids)) == set(ids)

    # Resume: with the bad files gone, nothing is uploaded and nothing new is indexed.
    (root / "bad.jpg").unlink()
    (root / "sub" / "truncated.jpg").unlink()
    jobs_before = index_job_ids(redis_client, collection)
    code, out, err = run(capsys, api_url, "index", str(root), "-c", collection)
    assert code == 0, (out, err)
    assert "skipped 4 already indexed; uploading 0 in 0 requests" in out
    assert "done: 0 new, 0 already present on the server, 0 files failed" in out
    assert index_job_ids(redis_client, collection) == jobs_before
    assert client.get(f"/v1/collections/{collection}").json()["image_count"] == 4


# -- search --------------------------------------------------------------------------------------


def test_search_by_a_file_finds_it_first(
    capsys: pytest.CaptureFixture[str], api_url: str, indexed: tuple[str, Path]
) -> None:
    name, root = indexed
    query = root / "sub" / "c.jpg"
    code, out, _ = run(capsys, api_url, "search", str(query), "-c", name, "-k", "3")
    assert code == 0
    header, first, *_ = out.splitlines()
    assert header.split() == ["rank", "similarity", "filename", "image_id"]
    rank, similarity, filename, image_id = first.split()
    assert (rank, filename, image_id) == ("1", "c.jpg", content_id(GOOD["sub/c.jpg"]))
    assert float(similarity) > 0.999
    assert "3 matches among 4 images" in out

    code, out, _ = run(capsys, api_url, "search", str(query), "-c", name, "-k", "3", "--json")
    result = json.loads(out)
    assert code == 0 and len(result["matches"]) == 3
    top = result["matches"][0]
    assert top["image_id"] == content_id(GOOD["sub/c.jpg"]) and top["similarity"] > 0.999


def test_search_by_id_and_with_nothing_close_enough(
    capsys: pytest.CaptureFixture[str], api_url: str, indexed: tuple[str, Path], tmp_path: Path
) -> None:
    name, _ = indexed
    target = content_id(GOOD["a.jpg"])
    code, out, _ = run(capsys, api_url, "search", "--id", target, "-c", name, "--json")
    assert code == 0 and target not in {m["image_id"] for m in json.loads(out)["matches"]}

    stranger = tmp_path / "stranger.jpg"
    stranger.write_bytes(photo_bytes(11_999))
    code, out, _ = run(capsys, api_url, "search", str(stranger), "-c", name, "--min-similarity", "0.99999")
    assert code == 0 and out.startswith("No similar images found")


# -- jobs, collections, export -------------------------------------------------------------------


def test_jobs_shows_a_finished_job(capsys: pytest.CaptureFixture[str], api_url: str, collection: str) -> None:
    with SimsearchClient(api_url) as api:
        accepted = api.index(collection, [("x.jpg", photo_bytes(11_100)), ("y.jpg", photo_bytes(11_101))])
    code, out, _ = run(capsys, api_url, "jobs", accepted["job_id"], "--wait", "60")
    assert code == 0
    assert "status      succeeded" in out and "progress    2/2 done, 0 failed" in out
    assert "result      2 created, 0 existing" in out

    code, out, _ = run(capsys, api_url, "jobs", accepted["job_id"], "--json")
    job = json.loads(out)
    assert code == 0 and job["status"] == "succeeded" and job["collection"] == collection


def test_collections_lists_the_indexed_collection(
    capsys: pytest.CaptureFixture[str], api_url: str, indexed: tuple[str, Path]
) -> None:
    name, _ = indexed
    code, out, _ = run(capsys, api_url, "collections")
    row = next(line.split() for line in out.splitlines() if line.startswith(name + " "))
    assert code == 0 and row[:4] == [name, "4", "resnet50", "2048"]

    code, out, _ = run(capsys, api_url, "collections", "--json")
    info = next(c for c in json.loads(out) if c["name"] == name)
    assert code == 0 and info["image_count"] == 4


def test_export_csv_to_stdout_and_npy_to_a_file(
    capsys: pytest.CaptureFixture[str],
    api_url: str,
    indexed: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, _ = indexed
    code, out, _ = run(capsys, api_url, "export", name, "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0
    assert rows[0] == ["image_id", "filename", *map(str, range(2048))]
    assert len(rows) == 1 + len(GOOD)
    assert {r[0] for r in rows[1:]} == {content_id(d) for d in GOOD.values()}
    assert {r[1] for r in rows[1:]} == {Path(n).name for n in GOOD}

    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, api_url, "export", name, "--format", "npy")
    assert code == 0 and f"to {name}.zip" in err
    with zipfile.ZipFile(tmp_path / f"{name}.zip") as archive:
        assert {"embeddings.npy", "ids.csv"} <= set(archive.namelist())
    assert not list(tmp_path.glob("*.part"))


# -- errors --------------------------------------------------------------------------------------


def test_api_errors_print_code_and_detail_and_exit_2(
    capsys: pytest.CaptureFixture[str], api_url: str, collection: str, tmp_path: Path
) -> None:
    query = tmp_path / "q.jpg"
    query.write_bytes(photo_bytes(1))
    code, out, err = run(capsys, api_url, "search", str(query), "-c", collection)
    assert code == 2 and out == ""
    assert err.startswith(f"error: collection_not_found: no collection '{collection}'")

    code, _, err = run(capsys, api_url, "export", collection, "-o", str(tmp_path / "x.csv"))
    assert code == 2 and err.startswith("error: collection_not_found")
    assert not list(tmp_path.glob("x.csv*"))  # no empty or partial file left behind

    code, _, err = run(capsys, api_url, "jobs", "no-such-job")
    assert code == 2 and err.startswith("error: job_not_found: ")


def test_connection_error_says_where_it_tried(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, _, err = run(capsys, url, "collections")
    assert code == 2 and f"cannot connect to the API at {url}" in err


def test_module_entry_point_reads_the_url_from_the_environment(api_url: str, indexed: tuple[str, Path]) -> None:
    env = {**os.environ, "SIMSEARCH_URL": api_url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "simsearch_client", "collections", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert indexed[0] in {c["name"] for c in json.loads(proc.stdout)}
