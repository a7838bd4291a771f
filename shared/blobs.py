"""Blob storage for the claim-check pattern: bytes live here, Redis and task messages carry keys.

Upload bytes (`uploads/<job>/<i>`) and 512 px renditions (`renditions/<collection>/<image_id>.jpg`)
are too big for Redis memory; records, vectors, logs and job state stay in Redis.

`BLOB_STORE_URL` picks the backend:
- `file:///abs/path`: a directory. Fine for a single host (or a disk every API and worker host
  mounts); the default, so a single-host start needs no object store.
- `s3://bucket/prefix`: any S3-compatible store (AWS, SeaweedFS, MinIO, ...); `S3_ENDPOINT_URL`
  for a non-AWS server. The bucket must exist: the service never creates or configures buckets.

Keys are chosen by the service, never by clients, and are validated anyway so that no key can
leave the store's root (see `validate_key`).
"""

from __future__ import annotations

import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import unquote, urlparse

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Data = bytes | bytearray | memoryview

# A segment may not start with a dot: that rules out "." and ".." and keeps dot-names free for the
# file store's temporary files, which therefore can never collide with (or be read as) a blob.
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
MAX_KEY_LENGTH = 512  # S3 allows 1024 bytes including the URL's prefix
MAX_SEGMENT_LENGTH = 255  # NAME_MAX of common file systems


class InvalidBlobKey(ValueError):
    pass


class BlobStoreError(RuntimeError):
    pass


def validate_key(key: str) -> str:
    """The key itself, or `InvalidBlobKey`: relative, '/'-separated, [A-Za-z0-9._-] segments."""
    if not isinstance(key, str) or not _KEY.fullmatch(key) or len(key) > MAX_KEY_LENGTH:
        raise InvalidBlobKey(f"invalid blob key {key!r}")
    if any(len(segment) > MAX_SEGMENT_LENGTH for segment in key.split("/")):
        raise InvalidBlobKey(f"invalid blob key {key!r}: a segment is longer than {MAX_SEGMENT_LENGTH}")
    return key


def validate_prefix(prefix: str) -> str:
    """A sweep prefix names a folder: `uploads` or `uploads/` covers `uploads/...`, not `uploads2/...`."""
    return validate_key(prefix.removesuffix("/") if isinstance(prefix, str) else prefix)


def default_blob_dir() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "simsearch" / "blobs"


def _default_blob_url() -> str:
    return default_blob_dir().as_uri()


class BlobStore(ABC):
    """A synchronous key → bytes store. Every method is safe to call from several threads at once."""

    url: str  # where it stores, for logs (never carries credentials)

    def __init__(self, max_concurrency: int = 16) -> None:
        self.max_concurrency = max_concurrency
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        # Bounded, so one call with 500 keys cannot open 500 connections or threads.
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="blobs")
            return self._executor

    @abstractmethod
    def put(self, key: str, data: Data) -> None:
        """Store `data` under `key`, replacing any earlier value whole (readers never see a partial one)."""

    def put_many(self, items: Mapping[str, Data] | Iterable[tuple[str, Data]]) -> None:
        """`put` of each (key, data), in parallel; raises the first failure (others may be written).

        Parallel on both backends: on S3 to overlap round trips, on files because concurrent fsyncs
        share journal commits (256 blobs of 40 KB: 1.9 s one by one, 0.14 s on 8 threads here).
        """
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        for key, _ in pairs:
            validate_key(key)
        if len(pairs) <= 1:
            for key, data in pairs:
                self.put(key, data)
            return
        for future in [self._pool().submit(self.put, key, data) for key, data in pairs]:
            future.result()

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The bytes under `key`, or None when there are none."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """`get` of each key, in the order given (None where missing)."""
        for key in keys:
            validate_key(key)
        return [self.get(key) for key in keys]

    @abstractmethod
    def delete(self, keys: str | Iterable[str]) -> None:
        """Remove these keys; keys that do not exist are ignored."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def put_file(self, key: str, path: Path) -> None:
        """Store the contents of a local file (large blobs: replica snapshots), streamed where the
        backend can, so that a blob of hundreds of MB is never held in memory whole."""
        self.put(key, Path(path).read_bytes())

    def get_file(self, key: str, path: Path) -> bool:
        """Write the blob under `key` to a local file, streamed where the backend can; False when
        there is no such blob (then `path` is not created)."""
        data = self.get(key)
        if data is None:
            return False
        Path(path).write_bytes(data)
        return True

    @abstractmethod
    def sweep(self, prefix: str, older_than_s: float) -> int:
        """Delete the blobs under folder `prefix` last written more than `older_than_s` ago; how many.

        The expiry path for uploads that were never processed: keys must be written once (unique per
        job), since a blob rewritten while a sweep runs may be removed with its old value's age.
        """

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _keys(keys: str | Iterable[str]) -> list[str]:
    # A bare string is one key, not an iterable of one-letter keys.
    return [validate_key(keys)] if isinstance(keys, str) else [validate_key(k) for k in keys]


class BlobSettings(BaseSettings):
    """Blob store settings; meant as fields of `CommonSettings` (API and workers must agree)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    blob_store_url: str = Field(default_factory=_default_blob_url)
    # File store: fsync each blob (and its directory) before it counts as written, so a blob whose
    # key Redis already holds survives a power cut. Costs a disk flush per write (~8 ms one at a
    # time on this VM; put_many's parallel writes share the flushes).
    blob_fsync: bool = True
    # Threads of one put_many / get_many (get_many is parallel on S3 only), and S3's connection pool.
    blob_max_concurrency: int = Field(default=16, ge=1, le=256)
    s3_endpoint_url: str | None = None  # None = AWS (or AWS_ENDPOINT_URL[_S3])
    s3_region: str | None = None  # None = the AWS config chain; us-east-1 with S3_ENDPOINT_URL
    # None = the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, roles).
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    # None = "path" with S3_ENDPOINT_URL (most self-hosted servers have no per-bucket DNS), else "auto".
    s3_addressing_style: Literal["auto", "path", "virtual"] | None = None
    s3_max_attempts: int = Field(default=5, ge=1, le=20)  # botocore "standard" retry mode, first try included
    s3_connect_timeout_s: float = Field(default=5.0, gt=0)
    s3_read_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("blob_store_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        _parse_url(value)
        return value

    def blob_store_options(self) -> dict[str, Any]:
        """Keyword arguments for `open_blob_store(self.blob_store_url, **...)`."""
        secret = self.s3_secret_access_key.get_secret_value() if self.s3_secret_access_key else None
        return {
            "fsync": self.blob_fsync,
            "max_concurrency": self.blob_max_concurrency,
            "endpoint_url": self.s3_endpoint_url,
            "region": self.s3_region,
            "access_key_id": self.s3_access_key_id,
            "secret_access_key": secret,
            "addressing_style": self.s3_addressing_style,
            "max_attempts": self.s3_max_attempts,
            "connect_timeout_s": self.s3_connect_timeout_s,
            "read_timeout_s": self.s3_read_timeout_s,
        }

    def open_blob_store(self) -> BlobStore:
        return open_blob_store(self.blob_store_url, **self.blob_store_options())


_FILE_OPTIONS = frozenset({"fsync", "max_concurrency"})
_S3_OPTIONS = frozenset(
    {
        "max_concurrency",
        "endpoint_url",
        "region",
        "access_key_id",
        "secret_access_key",
        "addressing_style",
        "max_attempts",
        "connect_timeout_s",
        "read_timeout_s",
    }
)


def _parse_url(url: str) -> tuple[str, str, str]:
    """(scheme, location, prefix): ("file", "/abs/dir", "") or ("s3", "bucket", "some/prefix")."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
            raise ValueError(f"BLOB_STORE_URL {url!r}: expected file:///absolute/path")
        path = unquote(parsed.path)
        if not path.startswith("/"):
            raise ValueError(f"BLOB_STORE_URL {url!r}: the path must be absolute (file:///...)")
        return "file", path, ""
    if parsed.scheme == "s3":
        bucket, prefix = parsed.netloc, parsed.path.strip("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or parsed.query or parsed.fragment:
            raise ValueError(f"BLOB_STORE_URL {url!r}: expected s3://bucket[/prefix] with a valid bucket name")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidBlobKey:
                raise ValueError(f"BLOB_STORE_URL {url!r}: invalid prefix {prefix!r}") from None
        return "s3", bucket, prefix
    raise ValueError(f"BLOB_STORE_URL {url!r}: expected file:///... or s3://bucket/prefix")


def open_blob_store(url: str, **settings: Any) -> BlobStore:
    """The store `url` names. `settings`: `BlobSettings.blob_store_options()`; options the backend
    does not use are ignored, so one set of settings serves both backends."""
    scheme, location, prefix = _parse_url(url)
    unknown = set(settings) - _FILE_OPTIONS - _S3_OPTIONS
    if unknown:
        raise TypeError(f"unknown blob store settings: {sorted(unknown)}")
    if scheme == "file":
        from shared.blobs_file import FileBlobStore

        return FileBlobStore(Path(location), **{k: v for k, v in settings.items() if k in _FILE_OPTIONS})

    from shared.blobs_s3 import S3BlobStore  # boto3 is imported only where S3 is used

    return S3BlobStore(location, prefix, **{k: v for k, v in settings.items() if k in _S3_OPTIONS})
