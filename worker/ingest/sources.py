"""Where an item's bytes come from: an upload blob, a URL (fetched under the SSRF rules of
shared.fetch), or an object of an allowed bucket. Fetches of one chunk run concurrently."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.fetch import Fetcher
from shared.urlcheck import FetchError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class BucketSettings:
    endpoint_url: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: str | None
    buckets: frozenset[str]  # which buckets may be imported from (empty: none)


def split_s3(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise FetchError(f"not an s3://bucket/key URL: {url!r}", code="invalid_url")
    return parts.netloc, parts.path.lstrip("/")


class Buckets:
    """Reads objects of the operator's allowed buckets (IMPORT_S3_*), one boto3 client."""

    def __init__(self, settings: BucketSettings, max_bytes: int) -> None:
        self.settings = settings
        self.max_bytes = max_bytes
        self._client = None

    @property
    def client(self):  # built on first use: most workers never import from a bucket
        if self._client is None:
            s = self.settings
            config = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=16)
            if s.endpoint_url:
                config = config.merge(Config(s3={"addressing_style": "path"}))
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=s.endpoint_url,
                region_name=s.region or ("us-east-1" if s.endpoint_url else None),
                aws_access_key_id=s.access_key_id,
                aws_secret_access_key=s.secret_access_key,
                config=config,
            )
        return self._client

    def check(self, bucket: str) -> None:
        if bucket not in self.settings.buckets:
            raise FetchError(f"bucket {bucket!r} is not in IMPORT_S3_BUCKETS", code="bucket_not_allowed")

    def list_images(self, url: str, start_after: str = "") -> Iterator[tuple[str, int]]:
        """(s3 URL, size) of every image object under the prefix, in key order, page by page."""
        bucket, prefix = split_s3(url)
        self.check(bucket)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, StartAfter=start_after
        )
        for page in pages:
            for obj in page.get("Contents", []):
                if obj["Key"].lower().endswith(IMAGE_SUFFIXES):
                    yield f"s3://{bucket}/{obj['Key']}", int(obj["Size"])

    def get(self, url: str) -> bytes:
        bucket, key = split_s3(url)
        self.check(bucket)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
            size = int(response.get("ContentLength") or 0)
            if size > self.max_bytes:
                response["Body"].close()
                raise FetchError(f"{size} bytes, over the limit of {self.max_bytes}", code="too_large")
            return response["Body"].read(self.max_bytes + 1)
        except ClientError as exc:
            raise FetchError(f"S3: {exc.response.get('Error', {}).get('Code', exc)}") from exc
        except BotoCoreError as exc:
            raise FetchError(f"S3: {exc}") from exc


@dataclass
class Sources:
    """One per worker process: the HTTP fetcher, the bucket reader and a small thread pool."""

    fetcher: Fetcher
    buckets: Buckets
    concurrency: int = 8

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch")

    def get(self, url: str) -> bytes:
        return self.buckets.get(url) if url.startswith("s3://") else self.fetcher.get(url)

    def get_many(self, urls: list[str]) -> list[bytes | FetchError]:
        """Each URL's bytes or its FetchError, in order; up to `concurrency` at a time."""

        def one(url: str) -> bytes | FetchError:
            try:
                return self.get(url)
            except FetchError as exc:
                return exc
            except Exception as exc:  # one odd URL fails its item, never its chunk
                return FetchError(f"{type(exc).__name__}: {exc}"[:300])

        return list(self._pool.map(one, urls))
