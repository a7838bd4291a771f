"""EfficientNet-Lite0 and -Lite2 in Keras against an independent numpy forward pass of the PyTorch weights."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.models import efficientnet_lite as eff
from shared.models import torch_pickle
from shared.models.base import Embedder

DATA = Path(__file__).resolve().parents[1] / "data"
REPO_ROOT = Path(__file__).resolve().parents[2]

# Straight from efficientnet_lite_pytorch/utils.py (efficientnet_lite(): block strings,
# batch_norm_epsilon=1e-3, relu_fn='relu6'), kept separate from the module under test.
TORCH_BLOCK_STRINGS = [
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
]
TORCH_BN_EPS = 1e-3
# efficientnet_params(): (width, depth); and the rounding of round_filters / round_repeats with
# fix_head_stem=True, restated here rather than imported from the module under test.
TORCH_MULTIPLIERS = {0: (1.0, 1.0), 2: (1.1, 1.2)}


def torch_round_filters(filters: int, width: float) -> int:
    scaled = filters * width
    new = max(8, int(scaled + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * scaled else new)


# --- an independent numpy implementation of the PyTorch model (NHWC, float64) ------------------


def torch_same_pad(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """Conv2dDynamicSamePadding: pad // 2 before, the rest after, so out = ceil(in / s)."""
    pads = []
    for size in x.shape[1:3]:
        pad = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((pad // 2, pad - pad // 2))
    return np.pad(x, [(0, 0), *pads, (0, 0)])


def _windows(x: np.ndarray, k: int, s: int) -> tuple[np.ndarray, int, int]:
    x = torch_same_pad(x, k, s)
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    return x, oh, ow


def np_conv2d(x: np.ndarray, w_oihw: np.ndarray, s: int = 1) -> np.ndarray:
    k = w_oihw.shape[2]
    x, oh, ow = _windows(x, k, s)
    out = np.zeros((x.shape[0], oh, ow, w_oihw.shape[0]))
    for i in range(k):
        for j in range(k):
            patch = x[:, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s, :]
            out += patch @ w_oihw[:, :, i, j].T
    return out


def np_depthwise(x: np.ndarray, w_c1hw: np.ndarray, s: int = 1) -> np.ndarray:
    k = w_c1hw.shape[2]
    x, oh, ow = _windows(x, k, s)
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i in range(k):
        for j in range(k):
            out += x[:, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s, :] * w_c1hw[:, 0, i, j]
    return out


def np_bn(x: np.ndarray, sd: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    scale = sd[f"{prefix}.weight"] / np.sqrt(sd[f"{prefix}.running_var"].astype(np.float64) + TORCH_BN_EPS)
    return (x - sd[f"{prefix}.running_mean"]) * scale + sd[f"{prefix}.bias"]


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def torch_blocks(number: int = 0) -> list[dict[str, int]]:
    width, depth = TORCH_MULTIPLIERS[number]
    blocks = []
    for i, text in enumerate(TORCH_BLOCK_STRINGS):
        o = {m[0]: int(m[1]) for m in re.findall(r"([a-z])(\d+)", text)}
        fixed = i in (0, len(TORCH_BLOCK_STRINGS) - 1)
        repeats = o["r"] if fixed else math.ceil(depth * o["r"])
        first_in = 32 if i == 0 else torch_round_filters(o["i"], width)
        out = torch_round_filters(o["o"], width)
        for r in range(repeats):
            first = r == 0
            blocks.append(
                {
                    "k": o["k"],
                    "s": o["s"] // 11 if first else 1,  # "s22" means stride (2, 2)
                    "e": o["e"],
                    "i": first_in if first else out,
                    "o": out,
                }
            )
    return blocks


def np_forward(sd: dict[str, np.ndarray], x: np.ndarray, number: int = 0) -> dict[str, np.ndarray]:
    """Stem, every MBConv block and the head; returns taps by name."""
    taps: dict[str, np.ndarray] = {}
    x = relu6(np_bn(np_conv2d(x.astype(np.float64), sd["_conv_stem.weight"], 2), sd, "_bn0"))
    taps["stem"] = x
    for idx, b in enumerate(torch_blocks(number)):
        p = f"_blocks.{idx}"
        h = x
        if b["e"] != 1:
            h = relu6(np_bn(np_conv2d(h, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
        h = relu6(np_bn(np_depthwise(h, sd[f"{p}._depthwise_conv.weight"], b["s"]), sd, f"{p}._bn1"))
        h = np_bn(np_conv2d(h, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        x = h + x if b["s"] == 1 and b["i"] == b["o"] else h
        taps[f"block{idx}"] = x
    x = relu6(np_bn(np_conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))
    taps["features"] = x.mean(axis=(1, 2))
    taps["logits"] = taps["features"] @ sd["_fc.weight"].T.astype(np.float64) + sd["_fc.bias"]
    return taps


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def state_dict() -> dict[str, np.ndarray]:
    return torch_pickle.load_legacy_torch_state_dict(eff.imagenet_checkpoint_path())


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("simsearch_cache")


@pytest.fixture(scope="session")
def classifier(cache_dir: Path):
    # The first build in the session converts the checkpoint and writes the cache.
    return eff.build_efficientnet_lite(eff.LITE0, include_top=True, input_size=224, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def lite2_state_dict() -> dict[str, np.ndarray]:
    return torch_pickle.load_legacy_torch_state_dict(eff.imagenet_checkpoint_path(eff.LITE2))


@pytest.fixture(scope="session")
def lite2_classifier(cache_dir: Path):
    return eff.build_efficientnet_lite(eff.LITE2, include_top=True, input_size=260, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def embedder(classifier, cache_dir: Path) -> eff.EfficientNetLiteEmbedder:
    # Average pooling: the classifier's own pooled features are the reference.
    return eff.EfficientNetLiteEmbedder(eff.LITE0, "imagenet", 224, cache_dir, pooling="avg")


def load_photo(name: str, size: int = 224) -> np.ndarray:
    from PIL import Image

    with Image.open(DATA / name) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


# --- tests --------------------------------------------------------------------------------------


def test_import_does_not_load_tensorflow() -> None:
    code = (
        "import sys, shared.models.efficientnet_lite, shared.models.torch_pickle; "
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_preprocess() -> None:
    x = np.array([[0, 127, 255]], dtype=np.uint8)
    out = eff.preprocess(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[-127 / 128, 0.0, 1.0]])


def test_conv_kernel_mapping_matches_numpy_reference() -> None:
    import keras

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 9, 3)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)  # OIHW, deliberately O != I
    for stride in (1, 2):
        layer = keras.layers.Conv2D(4, 3, strides=stride, padding="same", use_bias=False)
        layer.build(x.shape)
        layer.set_weights([eff.conv_kernel_to_keras(w)])
        np.testing.assert_allclose(np.asarray(layer(x)), np_conv2d(x, w, stride), atol=1e-5)


def test_depthwise_kernel_mapping_matches_numpy_reference() -> None:
    import keras

    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 8, 7, 5)).astype(np.float32)
    w = rng.normal(size=(5, 1, 5, 5)).astype(np.float32)  # (C, 1, H, W)
    assert eff.depthwise_kernel_to_keras(w).shape == (5, 5, 5, 1)
    for stride in (1, 2):
        layer = keras.layers.DepthwiseConv2D(5, strides=stride, padding="same", use_bias=False)
        layer.build(x.shape)
        layer.set_weights([eff.depthwise_kernel_to_keras(w)])
        np.testing.assert_allclose(np.asarray(layer(x)), np_depthwise(x, w, stride), atol=1e-5)


def test_dense_mapping() -> None:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)  # torch Linear(3 -> 2)
    kernel, _bias = eff.dense_to_keras({"fc.weight": w, "fc.bias": np.zeros(2, np.float32)}, "fc")
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    np.testing.assert_allclose(x @ kernel, w @ x)


def trainable_size(state: dict[str, np.ndarray]) -> int:
    """Parameters a checkpoint trains (weights and biases, not batch-norm statistics)."""
    return sum(v.size for k, v in state.items() if k.endswith((".weight", ".bias")))


def test_architecture(classifier, state_dict) -> None:
    assert classifier.input_shape == (None, 224, 224, 3)
    assert classifier.output_shape == (None, 1000)
    params = sum(int(np.prod(w.shape)) for w in classifier.trainable_weights)
    assert params == 4_652_008 == trainable_size(state_dict)
    bns = [layer for layer in classifier.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert bns and all(bn.epsilon == 1e-3 and bn.momentum == 0.99 for bn in bns)


def test_lite2_architecture(lite2_classifier, lite2_state_dict) -> None:
    assert lite2_classifier.input_shape == (None, 260, 260, 3)
    params = sum(int(np.prod(w.shape)) for w in lite2_classifier.trainable_weights)
    # The published size of EfficientNet-Lite2 is 6.1 M; the checkpoint decides the exact count.
    assert params == trainable_size(lite2_state_dict) and 6_000_000 < params < 6_200_000
    assert len(eff.block_specs(eff.LITE2)) == len(torch_blocks(2)) == 21
    assert len(eff.block_specs(eff.LITE1)) == 21  # Lite1 scales depth by 1.1: the same repeats


def test_round_filters_matches_the_builder() -> None:
    for filters in (16, 24, 40, 80, 112, 192, 320):
        for width in (1.0, 1.1, 1.2, 1.4):
            assert eff.round_filters(filters, width) == torch_round_filters(filters, width)


PHOTOS = [("tabby_cat.jpg", 281, 285), ("labrador_puppy.jpg", 151, 268), ("giant_panda.jpg", 388, 388)]


def assert_classifies(model, photo: str, low: int, high: int, size: int) -> None:
    logits = np.asarray(model(eff.preprocess(load_photo(photo, size)[None]), training=False))[0]
    top5 = np.argsort(-logits)[:5]
    print(f"{photo}: top-5 {top5.tolist()}")
    assert any(low <= c <= high for c in top5), top5
    assert low <= top5[0] <= high, "these photos are unambiguous: the top-1 class should be right"


@pytest.mark.parametrize(("photo", "low", "high"), PHOTOS)
def test_classifies_photos(classifier, photo: str, low: int, high: int) -> None:
    assert_classifies(classifier, photo, low, high, 224)


@pytest.mark.parametrize(("photo", "low", "high"), PHOTOS)
def test_lite2_classifies_photos(lite2_classifier, photo: str, low: int, high: int) -> None:
    assert_classifies(lite2_classifier, photo, low, high, 260)


def test_lite2_knows_the_labrador(lite2_classifier) -> None:
    # Lite2's first guess is a golden retriever (207); Labrador retriever (208) must be next.
    logits = np.asarray(lite2_classifier(eff.preprocess(load_photo("labrador_puppy.jpg", 260)[None])))[0]
    assert 208 in np.argsort(-logits)[:2]


def test_lite1_loads_its_checkpoint_strictly(tmp_path: Path) -> None:
    # assign_state_dict checks every tensor's shape and that none is left over.
    model = eff.build_efficientnet_lite(eff.LITE1, include_top=True, input_size=64, cache_dir=tmp_path)
    state = torch_pickle.load_legacy_torch_state_dict(eff.imagenet_checkpoint_path(eff.LITE1))
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable_size(state)
    assert (tmp_path / eff.LITE1.cache_filename).is_file()


def assert_matches_numpy(model, state: dict[str, np.ndarray], number: int, input_size: int) -> None:
    import keras

    blocks = len(torch_blocks(number))
    taps = [eff.STEM_OUTPUT, *(eff.block_output_name(i) for i in range(blocks)), eff.FEATURES_OUTPUT]
    probe = keras.Model(model.input, [model.get_layer(name).output for name in taps] + [model.output])
    x = np.random.default_rng(3).uniform(-1, 1, size=(2, input_size, input_size, 3)).astype(np.float32)

    outputs = [np.asarray(o) for o in probe(x, training=False)]
    ref = np_forward(state, x, number)
    expected = [ref["stem"], *(ref[f"block{i}"] for i in range(blocks)), ref["features"], ref["logits"]]

    for name, got, want in zip([*taps, "logits"], outputs, expected, strict=True):
        assert got.shape == want.shape, name
        max_diff = float(np.abs(got - want).max())
        print(f"lite{number} {input_size}px {name}: max |keras - numpy| = {max_diff:.2e}")
        tolerance = 1e-3 if name == "logits" else 1e-4  # logits sum 1280 products
        assert max_diff < tolerance, name


@pytest.mark.parametrize("input_size", [224, 100])
def test_matches_numpy_reference(state_dict, classifier, cache_dir: Path, input_size: int) -> None:
    # 100 px gives odd feature-map sizes (25, 13, 7), where asymmetric "same" padding matters.
    model = (
        classifier
        if input_size == 224
        else eff.build_efficientnet_lite(eff.LITE0, True, input_size=input_size, cache_dir=cache_dir)
    )
    assert_matches_numpy(model, state_dict, 0, input_size)


def test_lite2_matches_numpy_reference(lite2_state_dict, lite2_classifier, cache_dir: Path) -> None:
    # Built again at 100 px from the cache the classifier wrote: odd map sizes, and a cache round trip.
    model = eff.build_efficientnet_lite(eff.LITE2, True, input_size=100, cache_dir=cache_dir)
    assert_matches_numpy(model, lite2_state_dict, 2, 100)


def test_cache_is_written_once_and_reused(classifier, cache_dir: Path, monkeypatch) -> None:
    cache_file = cache_dir / eff.LITE0.cache_filename
    assert cache_file.is_file()
    assert not list(cache_dir.glob(".*.tmp.weights.h5")), "temporary file left behind"
    mtime = cache_file.stat().st_mtime_ns

    def must_not_read(path):
        raise AssertionError(f"the checkpoint was read again: {path}")

    monkeypatch.setattr(torch_pickle, "load_legacy_torch_state_dict", must_not_read)
    features = eff.build_efficientnet_lite(eff.LITE0, include_top=False, input_size=224, cache_dir=cache_dir)

    assert cache_file.stat().st_mtime_ns == mtime
    assert features.output_shape == (None, 1280)
    x = np.random.default_rng(4).uniform(-1, 1, size=(1, 224, 224, 3)).astype(np.float32)
    pooled = keras_features(classifier, x)
    np.testing.assert_allclose(np.asarray(features(x, training=False)), pooled, atol=1e-5)


def keras_features(classifier, x: np.ndarray) -> np.ndarray:
    import keras

    sub = keras.Model(classifier.input, classifier.get_layer(eff.FEATURES_OUTPUT).output)
    return np.asarray(sub(x, training=False))


def test_stale_cache_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    import h5py

    calls = []
    real_reader = torch_pickle.load_legacy_torch_state_dict

    def counting_reader(path):
        calls.append(path)
        return real_reader(path)

    monkeypatch.setattr(torch_pickle, "load_legacy_torch_state_dict", counting_reader)
    eff.build_efficientnet_lite(eff.LITE0, include_top=False, input_size=64, cache_dir=tmp_path)
    eff.build_efficientnet_lite(eff.LITE0, include_top=True, input_size=64, cache_dir=tmp_path)
    assert len(calls) == 1

    with h5py.File(tmp_path / eff.LITE0.cache_filename, "a") as f:
        f.attrs["simsearch_source"] = "some older layout"
    eff.build_efficientnet_lite(eff.LITE0, include_top=False, input_size=64, cache_dir=tmp_path)
    assert len(calls) == 2


def test_random_weights_are_deterministic() -> None:
    a = eff.build_efficientnet_lite(eff.LITE0, include_top=False, input_size=64, weights="random")
    b = eff.build_efficientnet_lite(eff.LITE0, include_top=False, input_size=64, weights="random")
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")  # the fallback path
def test_weights_file_round_trip(embedder, tmp_path: Path) -> None:
    path = tmp_path / "features_only.weights.h5"
    embedder._model.save_weights(path)
    restored = eff.build_efficientnet_lite(eff.LITE0, include_top=False, input_size=224, weights=str(path))
    for wa, wb in zip(embedder._model.get_weights(), restored.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    with pytest.raises(ValueError):
        eff.build_efficientnet_lite(eff.LITE0, include_top=True, input_size=224, weights=str(path))


def test_embedder(embedder, classifier) -> None:
    as_protocol: Embedder = embedder  # type-checked conformance; Embedder is not runtime_checkable
    assert (as_protocol.name, as_protocol.dim, as_protocol.input_size) == ("efficientnet-lite0", 1280, 224)

    images = np.stack([load_photo(p) for p in ("tabby_cat.jpg", "labrador_puppy.jpg", "giant_panda.jpg")])
    vectors = embedder.embed(images)
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    pooled = keras_features(classifier, eff.preprocess(images))
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    # Batch composition must not change a row (no batch statistics at inference).
    np.testing.assert_allclose(embedder.embed(images[1:2])[0], vectors[1], atol=1e-5)
    assert embedder.embed(images[:0]).shape == (0, 1280)
    with pytest.raises(ValueError):
        embedder.embed(images[:, :100])


def test_gem_pooling_is_the_default_and_correct(classifier, cache_dir: Path) -> None:
    import keras

    photos = np.stack([load_photo("tabby_cat.jpg"), load_photo("giant_panda.jpg")])
    fmap_model = keras.Model(classifier.input, classifier.get_layer(eff.FEATURES_OUTPUT).input)
    fmap = np.asarray(fmap_model(eff.preprocess(photos), training=False)).astype(np.float64)
    gem = np.cbrt(np.mean(np.maximum(fmap, eff.GEM_EPS) ** 3, axis=(1, 2)))
    expected = gem / np.linalg.norm(gem, axis=1, keepdims=True)
    embedder = eff.EfficientNetLiteEmbedder(eff.LITE0, "imagenet", 224, cache_dir)
    assert embedder.pooling == "gem"
    np.testing.assert_allclose(embedder.embed(photos), expected, atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        eff.EfficientNetLiteEmbedder(eff.LITE0, "imagenet", 224, cache_dir, pooling="max")


def test_rmac_regions_cover_the_map_as_rmac_does() -> None:
    # 7 x 7 (Lite0 at 224): the whole map; 2 x 2 windows of side 14/3 -> 5; 3 x 3 of side 14/4 -> 4.
    expected = [(0, 7, 0, 7)]
    expected += [(y, y + 5, x, x + 5) for y in (0, 2) for x in (0, 2)]
    expected += [(y, y + 4, x, x + 4) for y in (0, 2, 3) for x in (0, 2, 3)]
    assert eff.rmac_regions(7, 7) == expected
    # 10 x 10 (Lite2 at 292): 2 x 2 windows of side 20/3 -> 7; 3 x 3 of side 5, starting at 0, 2 (2.5
    # rounded to even) and 5.
    expected = [(0, 10, 0, 10)]
    expected += [(y, y + 7, x, x + 7) for y in (0, 3) for x in (0, 3)]
    expected += [(y, y + 5, x, x + 5) for y in (0, 2, 5) for x in (0, 2, 5)]
    assert eff.rmac_regions(10, 10) == expected
    # A wide map: squares sized by the short side, spread along the long one, never outside it.
    for y0, y1, x0, x1 in eff.rmac_regions(6, 10)[1:]:
        assert y1 - y0 == x1 - x0 and 0 <= y0 < y1 <= 6 and 0 <= x0 < x1 <= 10


def test_rmac_pooling_matches_numpy(classifier, cache_dir: Path) -> None:
    import keras

    photos = np.stack([load_photo("tabby_cat.jpg"), load_photo("labrador_puppy.jpg")])
    fmap_model = keras.Model(classifier.input, classifier.get_layer(eff.FEATURES_OUTPUT).input)
    fmap = np.asarray(fmap_model(eff.preprocess(photos), training=False)).astype(np.float64)
    total = np.zeros((2, 1280))
    for y0, y1, x0, x1 in eff.rmac_regions(7, 7):
        g = np.cbrt(np.mean(np.maximum(fmap[:, y0:y1, x0:x1], eff.GEM_EPS) ** 3, axis=(1, 2)))
        total += g / np.linalg.norm(g, axis=1, keepdims=True)
    expected = total / np.linalg.norm(total, axis=1, keepdims=True)
    embedder = eff.EfficientNetLiteEmbedder(eff.LITE0, "imagenet", 224, cache_dir, pooling="rmac")
    np.testing.assert_allclose(embedder.embed(photos), expected, atol=1e-5)
