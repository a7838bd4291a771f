"""Settings both services share. Each service has its own `BaseSettings` class built on this one."""

from __future__ import annotations

from typing import Any, Literal, Self
from urllib.parse import urlparse

import redis
import redis.asyncio
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shared.blobs import BlobSettings
from shared.connect import broker_kind, connect, connect_async
from shared.imaging import DEFAULT_MAX_PIXELS
from shared.shards import MAX_SHARDS


class CommonSettings(BlobSettings):
    # env_ignore_empty: compose passes unset optional variables as empty strings.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    environment: Literal["local", "test", "production"] = "local"
    # The data: redis://, or sentinel://host:port[;…] with REDIS_MASTER_NAME (shared/connect.py).
    redis_url: str = "redis://localhost:6379/0"
    redis_master_name: str = "mymaster"
    # The data on a Redis Cluster: REDIS_URL names any of its nodes (a broker of its own is then
    # required: BROKER_URL).
    redis_cluster: bool = False
    # Celery's broker: redis://, sentinel://host:port[;…] with BROKER_MASTER_NAME, or amqp://.
    # Unset: REDIS_URL (and REDIS_MASTER_NAME), one Redis for everything.
    broker_url: str | None = None
    broker_master_name: str = "mymaster"
    job_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    upload_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    # Entries kept in each collection's change log. A replica that falls further behind than this
    # rebuilds from the vectors (detected from the entries' sequence numbers).
    log_maxlen: int = Field(default=1_000_000, ge=1)
    # A task message held by a worker that stops sending heartbeats comes back to the queue after
    # this long (live workers refresh their messages every sixth of it).
    task_visibility_timeout_s: int = Field(default=30, ge=5)
    # Shards of a collection created without a `shards` value (PUT /v1/collections/{c}); both
    # services read it. A search of a sharded collection waits this long for every shard.
    default_shards: int = Field(default=1, ge=1, le=MAX_SHARDS)
    shard_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _deadline_within_visibility(self) -> Self:
        # The deadline task waits in a worker's timer, unacknowledged and not heartbeated: longer
        # than the visibility timeout and Redis would hand it out again.
        if self.shard_timeout_s >= self.task_visibility_timeout_s:
            if "shard_timeout_s" in self.model_fields_set:
                raise ValueError("SHARD_TIMEOUT_S must be below TASK_VISIBILITY_TIMEOUT_S")
            self.shard_timeout_s = self.task_visibility_timeout_s / 2  # the default, under a short visibility
        return self

    # Signs completion callbacks (HMAC-SHA256). Unset: the API refuses jobs with a callback_url.
    webhook_secret: SecretStr | None = None
    # Buckets that imports may read (`{"source": "s3://bucket/prefix"}`), comma-separated; empty:
    # bucket imports are refused. The workers reach them with IMPORT_S3_* (worker settings).
    import_s3_buckets: str = ""

    @field_validator("broker_url", "redis_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None:
            broker_kind(value)
        return value

    @model_validator(mode="after")
    def _cluster_needs_a_broker(self) -> Self:
        if self.redis_cluster and broker_kind(self.redis_url) != "redis":
            raise ValueError("REDIS_CLUSTER=true needs REDIS_URL=redis://<any node of the cluster>")
        if self.redis_cluster and not self.broker_url:
            raise ValueError(
                "a Redis Cluster cannot be Celery's broker (celery/kombu#526): set BROKER_URL to a standalone "
                "Redis, a Sentinel-managed one (sentinel://...), or RabbitMQ (amqp://...)"
            )
        return self

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def broker_master(self) -> str:
        return self.broker_master_name if self.broker_url else self.redis_master_name

    def redis(self, **options: Any) -> redis.Redis:
        """A client of the data Redis (its current primary, behind Sentinel)."""
        return connect(self.redis_url, self.redis_master_name, self.redis_cluster, **options)

    def redis_async(self, **options: Any) -> redis.asyncio.Redis:
        return connect_async(self.redis_url, self.redis_master_name, self.redis_cluster, **options)

    @property
    def import_buckets(self) -> frozenset[str]:
        return frozenset(b.strip() for b in self.import_s3_buckets.split(",") if b.strip())

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> CommonSettings:
        # An open Redis holds every vector and image: production must authenticate to it.
        if self.environment == "production" and not urlparse(self.redis_url).password:
            raise ValueError("REDIS_URL must carry a password when ENVIRONMENT=production")
        return self


class ModelSettings(CommonSettings):
    """The embedding model: workers run it, the API checks collections against it; and the limits
    on what is indexed, which the API applies to uploads and the workers to what they fetch."""

    embedding_model: str = "resnet50"
    # The model's input side in pixels; None = the model's default. Part of a collection's
    # embedding identity: set it to the same value for the API and the workers.
    input_size: int | None = Field(default=None, ge=32, le=1024)
    max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    # Metadata is copied onto every file of the same name and lives in Redis with the image.
    metadata_max_bytes_per_image: int = Field(default=16 * 1024, ge=64)
    # Items per task: of an upload or URL list (API), of what a source expands to (workers).
    index_chunk_size: int = Field(default=32, ge=1, le=512)

    @property
    def model_input_size(self) -> int:
        from shared.models.registry import MODELS

        return self.input_size or MODELS[self.embedding_model].default_input_size

    @property
    def embedding(self) -> str:
        """What makes two vectors comparable: the model and its input size."""
        return embedding_id(self.embedding_model, self.model_input_size)

    @field_validator("embedding_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from shared.models.registry import MODELS

        if value not in MODELS:
            raise ValueError(f"unknown EMBEDDING_MODEL {value!r}; choose one of {sorted(MODELS)}")
        return value


def embedding_id(model: str, input_size: int) -> str:
    return f"{model}@{input_size}"
