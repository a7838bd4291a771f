"""Where model weights are cached: read from the environment by the models' own code, which runs
without a service's settings (the worker's CACHE_DIR defaults to the first)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "simsearch"


class ModelCaches(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    simsearch_cache_dir: Path = DEFAULT_CACHE_DIR  # converted EfficientNet-Lite weights, OpenVINO models
    keras_home: Path = Path.home() / ".keras"  # Keras's own: its models/ holds the ResNet50 ImageNet weights
