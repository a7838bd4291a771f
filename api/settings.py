"""API configuration, from the environment."""

from __future__ import annotations

from pydantic import Field, model_validator

from api.auth import ApiKey
from shared.imaging import DEFAULT_MAX_PIXELS
from shared.settings import ModelSettings


class ApiSettings(ModelSettings):
    max_request_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_files_per_request: int = Field(default=1000, ge=1)
    max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    index_chunk_size: int = Field(default=32, ge=1, le=512)
    max_k: int = Field(default=1000, ge=1)
    max_wait_seconds: float = Field(default=30.0, ge=0, le=300)
    redis_timeout_s: float = Field(default=3.0, gt=0)
    # JSON list of {"name", "sha256", "collections"}; empty = the service runs open (and says so).
    api_keys: list[ApiKey] = Field(default_factory=list)
    # Requests per second per API key (per client address when open), counted in Redis; 0 = off.
    rate_limit_per_second: int = Field(default=200, ge=0)

    @model_validator(mode="after")
    def _keys_in_production(self) -> ApiSettings:
        if self.environment == "production" and not self.api_keys:
            raise ValueError("API_KEYS must be set when ENVIRONMENT=production")
        return self
