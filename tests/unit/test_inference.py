"""The inference backend layer: selection, fallback, and parity of the fast path with TF float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.imaging import decode_image, to_model_input
from shared.models.base import NetworkEmbedder, TensorFlowRunner
from shared.models.registry import get_model_spec
from worker.model import inference
from worker.model.inference import select_backend
from worker.model.threads import cpus

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize(
    ("requested", "openvino", "gpu", "expected"),
    [
        ("auto", True, False, "openvino"),
        ("auto", False, False, "tensorflow"),
        ("auto", True, True, "tensorflow"),  # a CUDA GPU: TensorFlow is the fast path there
        ("tensorflow", True, False, "tensorflow"),
        ("openvino", True, True, "openvino"),  # asked for explicitly
    ],
)
def test_backend_selection(requested: str, openvino: bool, gpu: bool, expected: str) -> None:
    assert select_backend(requested, openvino_available=openvino, cuda_gpu=gpu) == expected


def test_backend_selection_errors() -> None:
    with pytest.raises(ValueError, match="not installed"):
        select_backend("openvino", openvino_available=False, cuda_gpu=False)
    with pytest.raises(ValueError, match="INFERENCE_BACKEND"):
        select_backend("onnx", openvino_available=True, cuda_gpu=False)


@pytest.fixture(scope="module")
def resnet_random(tmp_path_factory: pytest.TempPathFactory):
    return get_model_spec("resnet50").build("random", 224, tmp_path_factory.mktemp("resnet"))


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory):
    return get_model_spec("efficientnet-lite0").build("imagenet", 256, tmp_path_factory.mktemp("lite"))


@pytest.fixture(scope="module")
def lite2(tmp_path_factory: pytest.TempPathFactory):
    spec = get_model_spec("efficientnet-lite2")
    return spec.build("imagenet", spec.default_input_size, tmp_path_factory.mktemp("lite2"))


def test_missing_openvino_falls_back_to_tensorflow(resnet_random, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(inference, "openvino_installed", lambda: False)
    runner = inference.make_runner(resnet_random, "auto", "auto", tmp_path, threads=2)
    assert isinstance(runner, TensorFlowRunner)
    with pytest.raises(ValueError, match="not installed"):
        inference.make_runner(resnet_random, "openvino", "auto", tmp_path, threads=2)


def test_a_failing_fast_runtime_falls_back_under_auto_only(resnet_random, monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("openvino")

    def broken(*args, **kwargs):
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(inference.OpenVINORunner, "__init__", broken)
    assert isinstance(inference.make_runner(resnet_random, "auto", "auto", tmp_path, threads=2), TensorFlowRunner)
    with pytest.raises(RuntimeError, match="exploded"):
        inference.make_runner(resnet_random, "openvino", "auto", tmp_path, threads=2)


def _real_photos(side: int) -> np.ndarray:
    paths = sorted(DATA.glob("*.jpg")) + sorted(inference.CALIBRATION_DIR.glob("*.jpg"))[::4]
    return np.stack([to_model_input(decode_image(p.read_bytes()).image, side) for p in paths])


@pytest.mark.parametrize("model", ["resnet_random", "lite0", "lite2"])
def test_fast_backend_matches_tensorflow_float32(model: str, request, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("openvino")
    network = request.getfixturevalue(model)
    fast = NetworkEmbedder(network, inference.OpenVINORunner(network, tmp_path, threads=2))
    reference = NetworkEmbedder(network, TensorFlowRunner(network))
    photos = _real_photos(network.input_size)
    cosines = np.sum(fast.embed(photos) * reference.embed(photos), axis=1)
    print(f"{network.name}: openvino {fast.runner.precision}, per-photo cosine min {cosines.min():.6f}")
    assert len(photos) >= 15
    assert cosines.min() >= 0.999
    # Pinned only when the threads cover every core: else every process took the same first cores.
    pinned = cpus() <= 2
    assert fast.runner.compiled.get_property("ENABLE_CPU_PINNING") is pinned
    assert fast.runner._batch.get_property("ENABLE_CPU_PINNING") is pinned

    # A restart loads the chosen model from the cache instead of converting again.
    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(inference.OpenVINORunner, "_convert_and_choose", must_not_convert)
    again = inference.OpenVINORunner(network, tmp_path, threads=1)
    assert again.precision == fast.runner.precision
    np.testing.assert_allclose(
        again(network.preprocess(photos[:2])), fast.runner(network.preprocess(photos[:2])), rtol=1e-5, atol=1e-6
    )
    assert again.compiled.get_property("ENABLE_CPU_PINNING") is (cpus() <= 1)  # False on 2+ cores
