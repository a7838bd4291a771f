"""API configuration, from the environment."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from api.auth import ApiKey
from api.netaddr import parse_networks
from shared.settings import ModelSettings


class ApiSettings(ModelSettings):
    max_request_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # JSON bodies are parsed whole, and parsing costs ~25x their size in memory: the small request
    # models (cluster, search by id) get a small cap; a lookup of 10,000 ids needs ~400 KB.
    max_json_body_bytes: int = Field(default=8 * 1024, ge=256)
    max_lookup_body_bytes: int = Field(default=512 * 1024, ge=1024)
    max_import_json_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # {"urls": [...]} bodies
    max_import_urls: int = Field(default=1000, ge=1, le=100_000)  # per JSON import; files take 1,000,000
    max_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_files_per_request: int = Field(default=1000, ge=1)
    metadata_max_bytes_per_request: int = Field(default=1024 * 1024, ge=1024)
    metadata_max_depth: int = Field(default=16, ge=1, le=64)
    max_k: int = Field(default=1000, ge=1)
    # A batch search's answers live in Redis for the job's life: k x queries is bounded (about 110
    # bytes a match; 1,000,000 matches ~ 110 MB). `all` counts the collection's images as queries.
    max_batch_matches: int = Field(default=1_000_000, ge=1000)
    # Jobs one API key (or client address, when open) may have open at once; 0: no limit.
    max_open_jobs_per_key: int = Field(default=100, ge=0)
    # Items (files, URLs, queries) of one key's open jobs not yet done; a request that would pass
    # it gets 429 too_many_items. Archive and bucket members count as they are listed. 0: no limit.
    max_queued_items_per_key: int = Field(default=100_000, ge=0)
    # Bytes one key's batch-search results may hold in Redis before its next batch search gets
    # 429 too_many_results (DELETE /v1/jobs/{id} frees them at once, else they expire). 0: no limit.
    max_result_bytes_per_key: int = Field(default=1 << 30, ge=0)
    max_wait_seconds: float = Field(default=30.0, ge=0, le=300)
    redis_timeout_s: float = Field(default=3.0, gt=0)
    # JSON list of {"name", "sha256", "collections", "scopes"}; empty = the service runs open (and says so).
    api_keys: list[ApiKey] = Field(default_factory=list)
    # Requests per second per API key (per client address otherwise), counted in Redis; 0 = off.
    rate_limit_per_second: int = Field(default=200, ge=0)
    # Failed authentications per client address before that address gets 429 for a minute; 0 = off.
    auth_failures_per_minute: int = Field(default=20, ge=0)
    # Proxies whose X-Forwarded-For is believed (IPs or CIDRs, JSON list or comma-separated).
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # raises ValueError, reported as a settings error at start
        return [v.strip() for v in value]

    @model_validator(mode="after")
    def _keys_in_production(self) -> ApiSettings:
        if self.environment == "production" and not self.api_keys:
            raise ValueError("API_KEYS must be set when ENVIRONMENT=production")
        return self
