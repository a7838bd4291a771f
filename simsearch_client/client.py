"""A small synchronous client for the simsearch HTTP API (v1).

Depends only on httpx and the standard library, so it can be installed without any server code
(`pip install simsearch[client]`). Every API error becomes a `SimsearchError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypedDict

import httpx

__all__ = [
    "FINAL_STATUSES",
    "LOOKUP_BATCH",
    "JobTimeout",
    "SearchOptions",
    "SimsearchClient",
    "SimsearchConnectionError",
    "SimsearchError",
    "image_id_of",
]

FINAL_STATUSES = frozenset({"succeeded", "partial", "failed"})
LOOKUP_BATCH = 10_000  # the API's limit of ids per lookup request
MAX_LONG_POLL = 30.0  # the API caps ?wait= at 30 seconds
USER_AGENT = "simsearch-client/0.1"

SEARCH_TIMEOUT = 600.0  # seconds a search waits for its job by default

JobCallback = Callable[[dict[str, Any]], None]


class SearchOptions(TypedDict, total=False):
    """What every kind of search takes besides its query and `k`."""

    min_similarity: float | None  # drop matches below it (None: the collection's calibrated threshold)
    cluster: int | None  # only matches from this cluster
    timeout: float  # seconds to wait for the search job (SEARCH_TIMEOUT)
    filter: dict[str, Any] | None  # only matches whose metadata passes it, e.g. {"label": "cat"}


class SimsearchError(Exception):
    """An error answered by the API (`{"error": code, "detail": text}`), or met while talking to it.

    `status` is the HTTP status, or None when the error did not come with one (a failed job, a
    connection problem).
    """

    def __init__(self, status: int | None, code: str, detail: Any) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {format_detail(detail)}")


class SimsearchConnectionError(SimsearchError):
    """The API could not be reached (refused, DNS, timeout); the message names the URL tried."""


class JobTimeout(SimsearchError):
    """A job was still not finished when the client stopped waiting for it."""


def format_detail(detail: Any) -> str:
    """Validation errors arrive as a list of {loc, msg, type}: make them one readable line."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def _callback(url: str | None) -> dict[str, str]:
    return {"callback_url": url} if url else {}


def image_id_of(data: bytes) -> str:
    """The id the server gives these bytes: SHA-256, first 128 bits in hex."""
    return hashlib.sha256(data).hexdigest()[:32]


def _error_from_response(response: httpx.Response) -> SimsearchError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        return SimsearchError(response.status_code, str(body["error"]), body.get("detail", ""))
    # Not the API's error shape (a proxy in between, or not simsearch at all): keep what we got.
    text = response.text.strip()[:500] or response.reason_phrase
    return SimsearchError(response.status_code, f"http_{response.status_code}", text)


class SimsearchClient:
    """Synchronous client; safe to share between threads (httpx.Client pools its connections).

    >>> with SimsearchClient("http://localhost:8000") as api:
    ...     result = api.search("pets", "query.jpg", k=5)
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimsearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    image_id_of = staticmethod(image_id_of)

    # -- transport -------------------------------------------------------------------------------

    def _connection_error(self, exc: httpx.TransportError) -> SimsearchConnectionError:
        what = "timed out talking to" if isinstance(exc, httpx.TimeoutException) else "cannot connect to"
        return SimsearchConnectionError(None, "connection_error", f"{what} the API at {self.base_url}: {exc}")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- jobs ------------------------------------------------------------------------------------

    def job(self, job_id: str, wait: float = 0) -> dict[str, Any]:
        """The job's current state; with `wait`, the server holds the reply until it ends (≤ 30 s)."""
        wait = max(0.0, min(float(wait), MAX_LONG_POLL))
        # The read timeout must outlast the long poll, or every slow job would look like a dead server.
        return self._json("GET", f"/v1/jobs/{job_id}", params={"wait": wait}, timeout=self.timeout + wait)

    def wait(
        self,
        job_id: str,
        timeout: float = 600.0,
        poll: float = MAX_LONG_POLL,
        on_progress: JobCallback | None = None,
    ) -> dict[str, Any]:
        """Long-poll until the job is succeeded, partial or failed; raise `JobTimeout` after `timeout` s.

        `poll` bounds each long poll: a small value returns more often, so `on_progress` (called with
        every state seen) can follow a running job.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            job = self.job(job_id, wait=max(0.0, min(poll, remaining)))
            if on_progress is not None:
                on_progress(job)
            if job["status"] in FINAL_STATUSES:
                return job
            if remaining <= 0:
                raise JobTimeout(None, "job_timeout", f"job {job_id} still {job['status']} after {timeout:g} s")

    # -- indexing --------------------------------------------------------------------------------

    def index(
        self,
        collection: str,
        files: Sequence[tuple[str, bytes]],
        metadata: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Queue (file name, bytes) pairs for indexing; returns `{"job_id", "status_url", "total"}`.

        `metadata` maps a file name to a JSON object stored with that image.
        """
        parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
        data = {"metadata": json.dumps(metadata)} if metadata else None
        return self._json("POST", f"/v1/collections/{collection}/images", files=parts, data=data)

    def index_archive(
        self, collection: str, archive: str | os.PathLike[str], callback_url: str | None = None
    ) -> dict[str, Any]:
        """Queue a .zip / .tar / .tar.gz for indexing (streamed from disk); a worker expands it, so
        the job's total grows as members are listed. Returns `{"job_id", "status_url", "total"}`."""
        path = Path(archive)
        with path.open("rb") as fh:
            return self._json(
                "POST",
                f"/v1/collections/{collection}/images",
                params=_callback(callback_url),
                files=[("files", (path.name, fh, "application/octet-stream"))],
            )

    def import_urls(
        self,
        collection: str,
        urls: Sequence[str | dict[str, Any]] | str | os.PathLike[str],
        callback_url: str | None = None,
    ) -> dict[str, Any]:
        """Index images from URLs: a list (≤ 1,000; strings or `{"url", "metadata"}`), or a text/CSV
        file path (one URL per line or `url,metadata-json`; up to 1,000,000, streamed)."""
        if isinstance(urls, (str, os.PathLike)):
            with Path(urls).open("rb") as fh:
                return self._json(
                    "POST",
                    f"/v1/collections/{collection}/imports",
                    params=_callback(callback_url),
                    content=fh,
                    headers={"Content-Type": "text/csv"},
                )
        body: dict[str, Any] = {"urls": list(urls)}
        if callback_url:
            body["callback_url"] = callback_url
        return self._json("POST", f"/v1/collections/{collection}/imports", json=body)

    def import_bucket(self, collection: str, source: str, callback_url: str | None = None) -> dict[str, Any]:
        """Index every image object under `s3://bucket/prefix` (the bucket must be allowed by the server)."""
        body: dict[str, Any] = {"source": source}
        if callback_url:
            body["callback_url"] = callback_url
        return self._json("POST", f"/v1/collections/{collection}/imports", json=body)

    def lookup(self, collection: str, image_ids: Iterable[str]) -> set[str]:
        """Which of these ids the collection already holds (asked in batches of 10,000)."""
        ids = list(dict.fromkeys(image_ids))  # de-duplicated, order kept
        existing: set[str] = set()
        for start in range(0, len(ids), LOOKUP_BATCH):
            body = {"image_ids": ids[start : start + LOOKUP_BATCH]}
            existing.update(self._json("POST", f"/v1/collections/{collection}/images/lookup", json=body)["existing"])
        return existing

    # -- search ----------------------------------------------------------------------------------

    @staticmethod
    def _search_params(k: int, min_similarity: float | None, cluster: int | None) -> dict[str, Any]:
        params: dict[str, Any] = {"k": k}
        if min_similarity is not None:
            params["min_similarity"] = min_similarity
        if cluster is not None:
            params["cluster"] = cluster
        return params

    def _search_result(self, answer: dict[str, Any], timeout: float) -> dict[str, Any]:
        # The finished job itself when the search ended within the POST's wait; else its id (202).
        job = answer if answer.get("status") in FINAL_STATUSES else self.wait(answer["job_id"], timeout=timeout)
        if job["status"] != "succeeded":
            # A failed search job carries {"error", "detail"} as its result (e.g. an undecodable query).
            result = job.get("result") or (job.get("errors") or [{}])[0]
            raise SimsearchError(None, result.get("error", "search_failed"), result.get("detail", job["status"]))
        return job["result"]

    def search(
        self,
        collection: str,
        image: bytes | str | os.PathLike[str],
        k: int = 10,
        min_similarity: float | None = None,
        cluster: int | None = None,
        timeout: float = SEARCH_TIMEOUT,
        filter: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Search with an image (bytes, or a path to read); waits and returns the job's result:
        `{"matches": [{"image_id", "filename", "similarity"}], "message"?, "collection_size", ...}`.
        `filter` keeps only matches whose metadata passes it, e.g. `{"label": "cat"}`."""
        if isinstance(image, bytes):
            name, data = "query", image
        else:
            name, data = Path(image).name, Path(image).read_bytes()
        form = {"filter": json.dumps(filter)} if filter is not None else None
        options = SearchOptions(min_similarity=min_similarity, cluster=cluster, timeout=timeout, filter=filter)
        return self._search(collection, k, options, files={"file": (name, data, "application/octet-stream")}, data=form)

    def search_by_id(
        self,
        collection: str,
        image_id: str,
        k: int = 10,
        min_similarity: float | None = None,
        cluster: int | None = None,
        timeout: float = SEARCH_TIMEOUT,
        filter: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Search with an image already in the collection (it is left out of its own matches)."""
        options = SearchOptions(min_similarity=min_similarity, cluster=cluster, timeout=timeout, filter=filter)
        return self._search_json(collection, {"image_id": image_id}, k, options)

    def search_by_url(
        self,
        collection: str,
        url: str,
        k: int = 10,
        min_similarity: float | None = None,
        cluster: int | None = None,
        timeout: float = SEARCH_TIMEOUT,
        filter: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Search with an image the server fetches from `url` (public addresses only)."""
        options = SearchOptions(min_similarity=min_similarity, cluster=cluster, timeout=timeout, filter=filter)
        return self._search_json(collection, {"url": url}, k, options)

    def search_examples(
        self,
        collection: str,
        positive: Sequence[str | dict[str, Any]],
        negative: Sequence[str | dict[str, Any]] = (),
        k: int = 10,
        min_similarity: float | None = None,
        cluster: int | None = None,
        timeout: float = SEARCH_TIMEOUT,
        filter: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """More like `positive`, less like `negative`: stored image ids, or `{"image_id" | "url",
        "weight"}` objects. No example is among the matches."""

        def example(e: str | dict[str, Any]) -> dict[str, Any]:
            return {"image_id": e} if isinstance(e, str) else dict(e)

        body: dict[str, Any] = {"positive": [example(e) for e in positive]}
        if negative:
            body["negative"] = [example(e) for e in negative]
        options = SearchOptions(min_similarity=min_similarity, cluster=cluster, timeout=timeout, filter=filter)
        return self._search_json(collection, body, k, options)

    def _search_json(self, collection: str, body: dict[str, Any], k: int, options: SearchOptions) -> dict[str, Any]:
        if (filter := options.get("filter")) is not None:
            body = {**body, "filter": filter}
        return self._search(collection, k, options, json=body)

    def _search(self, collection: str, k: int, options: SearchOptions, **request: Any) -> dict[str, Any]:
        """Post one search (its query in `request`: an upload or a JSON body) and wait for its result."""
        timeout = options.get("timeout", SEARCH_TIMEOUT)
        # Wait in the POST itself: one request when the answer comes within it (an API older than
        # `wait` on searches ignores it and answers 202, and the job is then long-polled as before).
        wait = max(0.0, min(float(timeout), MAX_LONG_POLL))
        params = self._search_params(k, options.get("min_similarity"), options.get("cluster")) | {"wait": wait}
        path = f"/v1/collections/{collection}/search"
        started = time.monotonic()
        answer = self._json("POST", path, params=params, timeout=self.timeout + wait, **request)
        return self._search_result(answer, max(0.0, timeout - (time.monotonic() - started)))

    def search_batch(
        self,
        collection: str,
        queries: Sequence[tuple[str, bytes]] | None = None,
        image_ids: Sequence[str] | None = None,
        all_images: bool = False,
        k: int = 10,
        min_similarity: float | None = None,
        filter: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Queue a batch search: (name, bytes) uploads (≤ 1,000), stored `image_ids`, or
        `all_images`. Returns `{"job_id", ...}`; follow it with `wait`, read it with `batch_results`.
        `filter` applies to every query's matches."""
        params = self._search_params(k, min_similarity, None)
        path = f"/v1/collections/{collection}/search/batch"
        if queries is not None:
            files = [("files", (name, data, "application/octet-stream")) for name, data in queries]
            form = {"filter": json.dumps(filter)} if filter is not None else None
            return self._json("POST", path, params=params, files=files, data=form)
        body: dict[str, Any] = {"all": True} if all_images else {"image_ids": list(image_ids or [])}
        if filter is not None:
            body["filter"] = filter
        return self._json("POST", path, params=params, json=body)

    def batch_results(self, job_id: str) -> Iterator[dict[str, Any] | None]:
        """Every answer of a batch search, in query order, streamed (JSON lines)."""
        with self._http.stream("GET", f"/v1/jobs/{job_id}/results", params={"format": "jsonl"}) as response:
            if response.status_code >= 400:
                response.read()
                raise _error_from_response(response)
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def duplicates(
        self,
        collection: str,
        min_similarity: float = 0.95,
        k: int = 10,
        max_groups: int = 1000,
        timeout: float = 3600.0,
    ) -> dict[str, Any]:
        """Near-duplicate groups: `{"group_count", "images_in_groups", "groups": [{"representative",
        "size", "members": [{"image_id", "filename", "similarity"}]}], ...}`, largest first."""
        body = {"min_similarity": min_similarity, "k": k, "max_groups": max_groups}
        accepted = self._json("POST", f"/v1/collections/{collection}/duplicates", json=body)
        return self._search_result(accepted, timeout)

    # -- collections -----------------------------------------------------------------------------

    def collections(self) -> list[dict[str, Any]]:
        """Every collection: `{"name", "image_count", "model", "dimension", "created_at"}`."""
        return self._json("GET", "/v1/collections")

    def collection(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/collections/{name}")

    def images(
        self, collection: str, offset: int = 0, limit: int = 50, filter: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A page of the collection's image records (`{"total", "images"}`), in the order added;
        with `filter`, only those whose metadata passes it."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if filter is not None:
            params["filter"] = json.dumps(filter)
        return self._json("GET", f"/v1/collections/{collection}/images", params=params)

    def export(self, collection: str, format: str, out_file: IO[bytes]) -> int:
        """Stream the collection's embeddings (`csv`, or `npy`: a zip) into a binary file object.

        Returns the number of bytes written; memory stays flat whatever the collection size.
        """
        path = f"/v1/collections/{collection}/export"
        written = 0
        try:
            with self._http.stream("GET", path, params={"format": format}) as response:
                if response.status_code >= 400:
                    response.read()  # the error body is small; needed before .json()
                    raise _error_from_response(response)
                for chunk in response.iter_bytes():
                    out_file.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        return written
