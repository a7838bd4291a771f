"""The S3 blob store (AWS or any S3-compatible server), on one thread-safe boto3 client."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError

from shared.blobs import BlobStore, BlobStoreError, Data, _keys, validate_key, validate_prefix

DELETE_BATCH = 1000  # the most keys one DeleteObjects call accepts
_MISSING = {"NoSuchKey", "NotFound", "404"}  # GET says NoSuchKey; HEAD has no body, only the status
# botocore retries failed requests itself, but not a response body that breaks off while read.
_BODY_ATTEMPTS = 3


def _missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in _MISSING


class S3BlobStore(BlobStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str | None = None,
        max_concurrency: int = 16,
        max_attempts: int = 5,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("set both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, or neither")
        super().__init__(max_concurrency)
        self.bucket = bucket
        self._root = f"{validate_key(prefix)}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" + (f" at {endpoint_url}" if endpoint_url else "")
        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max_concurrency,
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            s3={"addressing_style": addressing_style or ("path" if endpoint_url else "auto")},
        )
        # An own session: boto3's default session is not safe to share between threads.
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            # Self-hosted servers mostly ignore the region, but SigV4 signs one; skip the lookup.
            region_name=region or ("us-east-1" if endpoint_url else None),
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    def _key(self, key: str) -> str:
        return self._root + validate_key(key)

    def put(self, key: str, data: Data) -> None:
        # A PUT replaces the object whole; S3 never shows readers a partial object.
        self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data))

    def get(self, key: str) -> bytes | None:
        name = self._key(key)
        for attempt in itertools.count(1):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=name)
            except ClientError as error:
                if _missing(error):
                    return None
                raise
            try:
                with response["Body"] as body:
                    return body.read()
            except (HTTPClientError, IncompleteReadError):
                if attempt >= _BODY_ATTEMPTS:
                    raise

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        for key in keys:
            validate_key(key)
        if len(keys) <= 1:
            return [self.get(key) for key in keys]
        # The client's connection pool has as many connections as the executor has threads.
        return list(self._pool().map(self.get, keys))

    def put_file(self, key: str, path: Path) -> None:
        # boto3's managed transfer: multipart above 8 MB, parts read from the file as they go.
        self._client.upload_file(str(path), self.bucket, self._key(key))

    def get_file(self, key: str, path: Path) -> bool:
        try:
            self._client.download_file(self.bucket, self._key(key), str(path))
        except ClientError as error:
            if _missing(error):
                return False
            raise
        return True

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if _missing(error):
                return False
            raise
        return True

    def delete(self, keys: str | Iterable[str]) -> None:
        self._delete_names([self._root + key for key in _keys(keys)])

    def _delete_names(self, names: list[str]) -> None:
        for start in range(0, len(names), DELETE_BATCH):
            batch = names[start : start + DELETE_BATCH]
            response = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True}
            )
            # DeleteObjects answers 200 even when some keys failed; they are listed under Errors.
            errors = response.get("Errors") or []
            if errors:
                first = ", ".join(f"{e.get('Key')}: {e.get('Code')}" for e in errors[:3])
                raise BlobStoreError(f"{len(errors)} of {len(batch)} deletes failed ({first})")

    def sweep(self, prefix: str, older_than_s: float) -> int:
        folder = f"{self._root}{validate_prefix(prefix)}/"
        cutoff = time.time() - older_than_s
        # Listed in full before deleting: deleting while paginating could make a server whose
        # continuation tokens are positions (not keys) skip entries.
        old = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            old += [item["Key"] for item in page.get("Contents", []) if item["LastModified"].timestamp() < cutoff]
        self._delete_names(old)
        return len(old)

    def close(self) -> None:
        super().close()
        self._client.close()
