"""Inference backends: the network is defined once in Keras; this picks what runs it.

`INFERENCE_BACKEND=auto` uses OpenVINO where it is installed and the device is a CPU (it reads
the Keras model directly), and TensorFlow otherwise (no OpenVINO, or a CUDA GPU). The OpenVINO
runner chooses its precision by measurement at first start: INT8 (VNNI/AMX) if its embeddings stay
within the parity bound of TensorFlow float32 on shipped calibration photos, else bfloat16 where
the CPU has it natively, else float32. The result is cached on disk, so a restart only loads it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from shared import models
from shared.imaging import decode_image, to_model_input
from shared.models.base import Network, NetworkEmbedder, Runner, TensorFlowRunner, l2_normalise
from worker.model.threads import cpus

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorflow", "openvino")
PRECISIONS = ("auto", "int8", "bf16", "f32")
CALIBRATION_DIR = Path(models.__file__).resolve().parent / "calibration"  # shipped with the model code
CACHE_LAYOUT = "v1"


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def cuda_gpu_present() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def select_backend(requested: str, *, openvino_available: bool, cuda_gpu: bool) -> str:
    if requested not in BACKENDS:
        raise ValueError(f"INFERENCE_BACKEND must be one of {BACKENDS}, not {requested!r}")
    if requested == "openvino" and not openvino_available:
        raise ValueError("INFERENCE_BACKEND=openvino, but the openvino package is not installed")
    if requested == "auto":
        # OpenVINO's CPU plugin is the fast path on CPUs; on a CUDA GPU TensorFlow is.
        return "openvino" if openvino_available and not cuda_gpu else "tensorflow"
    return requested


def calibration_images(side: int) -> np.ndarray:
    paths = sorted(CALIBRATION_DIR.glob("*.jpg"))
    return np.stack([to_model_input(decode_image(p.read_bytes()).image, side) for p in paths])


def pin_threads(threads: int) -> bool:
    """Whether OpenVINO may pin its threads to cores. It pins from the first core of the process's
    set on, knowing nothing of other processes: with fewer threads than cores (WORKER_CONCURRENCY=2,
    or INFERENCE_THREADS set for several workers on one host) every process took the same first
    cores, two pool processes sharing one at half speed each (ResNet50 INT8: 62 instead of 121
    images/s). A process whose threads cover all its cores leaves none idle that way, and pinned it
    ran Lite2 ingest 3.5 % faster (bench/ingest_profile.py, 94.4 against 90.8 and 91.1 images/s)."""
    return threads >= cpus()


def min_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.min(np.sum(l2_normalise(reference) * l2_normalise(candidate), axis=1)))


class OpenVINORunner:
    backend = "openvino"

    def __init__(
        self,
        network: Network,
        cache_dir: Path,
        threads: int,
        precision: str = "auto",
        parity_min: float = 0.999,
    ) -> None:
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"INFERENCE_PRECISION must be one of {PRECISIONS}, not {precision!r}")
        self.core = ov.Core()
        key = hashlib.sha256(
            f"{CACHE_LAYOUT}|{network.name}|{network.input_size}|{network.weights_id}|{ov.__version__}|{precision}".encode()
        ).hexdigest()[:16]
        self.cache = Path(cache_dir) / "openvino" / f"{network.name}-{network.input_size}-{key}"
        # OpenVINO keys its compiled blobs by model content itself; one folder serves every model.
        self.blobs = Path(cache_dir) / "openvino" / "blobs"
        self.parity_min = parity_min
        started = time.perf_counter()
        model, meta = self._load_cached() or self._convert_and_choose(network, precision)
        self.precision = meta["precision"]
        self.parity = meta["parity"]
        self.compiled = self._compile(model, self.precision, threads)
        self._request = self.compiled.create_infer_request()
        # Batches run as independent single-thread streams, one slice each: a thread interrupted by
        # other work on the machine then delays only its slice instead of stalling a shared barrier.
        self.streams = max(1, threads)
        self._batch = self._compile(model, self.precision, threads, streams=self.streams)
        self._queue = ov.AsyncInferQueue(self._batch, self.streams)
        self._parts: list[np.ndarray | None] = [None] * self.streams
        self._queue.set_callback(self._collect)
        log.info(
            "openvino %s ready for %s@%d: parity (min cosine vs TF float32) %.5f, %.1fs",
            self.precision,
            network.name,
            network.input_size,
            self.parity,
            time.perf_counter() - started,
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if len(batch) < 2 * self.streams:  # a query or a tiny batch: all threads on one request
            return np.array(self._request.infer({0: batch})[0], dtype=np.float32)
        slices = np.array_split(batch, self.streams)
        for i, part in enumerate(slices):
            self._queue.start_async({0: part}, i)
        self._queue.wait_all()
        return np.concatenate(self._parts[: len(slices)])

    def _collect(self, request, index: int) -> None:
        self._parts[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32)

    # -- building ---------------------------------------------------------------------------
    def _compile(self, model, precision: str, threads: int, streams: int = 0):
        self.core.set_property("CPU", {"CACHE_DIR": str(self.blobs)})
        config = {
            # int8 models carry their own quantization; the hint governs the remaining ops.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "THROUGHPUT" if streams else "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            "ENABLE_CPU_PINNING": pin_threads(threads),
        }
        if streams:
            config["NUM_STREAMS"] = streams
        return self.core.compile_model(model, "CPU", config)

    def _load_cached(self):
        meta_path, xml = self.cache / "meta.json", self.cache / "model.xml"
        if not (meta_path.is_file() and xml.is_file()):
            return None
        return self.core.read_model(xml), json.loads(meta_path.read_text())

    def _convert_and_choose(self, network: Network, precision: str):
        import openvino as ov

        side = network.input_size
        fp32 = ov.convert_model(network.model, input=[(-1, side, side, 3)])
        images = network.preprocess(calibration_images(side))
        calibrate, check = images[:32], images[32:]
        reference = TensorFlowRunner(network)(check)
        chosen, parity = None, 0.0
        for candidate in self._candidates(precision):
            model = self._quantize(fp32, calibrate) if candidate == "int8" else fp32
            out = self._compile(model, candidate, threads=cpus()).create_infer_request().infer({0: check})[0]
            parity = min_cosine(reference, np.asarray(out))
            log.info("openvino %s: min cosine vs TF float32 on %d photos = %.5f", candidate, len(check), parity)
            if parity >= self.parity_min or candidate == "f32":
                chosen = (model, candidate)
                break
        model, candidate = chosen
        meta = {"precision": candidate, "parity": parity, "network": network.name, "weights": network.weights_id}
        self._save(model, meta)
        return model, meta

    def _save(self, model, meta: dict) -> None:
        """Write into a private folder, then rename: workers starting together on a shared cache
        never see half a model."""
        import openvino as ov

        staging = self.cache.with_name(f"{self.cache.name}.tmp-{os.getpid()}")
        staging.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, staging / "model.xml", compress_to_fp16=False)
        (staging / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(staging, self.cache)
        except OSError:  # another worker got there first; its model is the same
            shutil.rmtree(staging, ignore_errors=True)

    def _candidates(self, precision: str) -> list[str]:
        if precision != "auto":
            return [precision] if precision == "f32" else [precision, "f32"]
        native_bf16 = "BF16" in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return ["int8", *(["bf16"] if native_bf16 else []), "f32"]

    @staticmethod
    def _quantize(model, calibrate: np.ndarray):
        import nncf

        dataset = nncf.Dataset([calibrate[i : i + 8] for i in range(0, len(calibrate), 8)])
        return nncf.quantize(model, dataset, subset_size=len(calibrate), preset=nncf.QuantizationPreset.MIXED)


def make_runner(network: Network, backend: str, precision: str, cache_dir: Path, threads: int) -> Runner:
    chosen = select_backend(backend, openvino_available=openvino_installed(), cuda_gpu=cuda_gpu_present())
    if chosen == "openvino":
        try:
            return OpenVINORunner(network, cache_dir, threads, precision)
        except Exception:
            if backend == "openvino":
                raise
            log.exception("OpenVINO could not compile %s; falling back to TensorFlow", network.name)
    return TensorFlowRunner(network)


def build_embedder(network: Network, backend: str, precision: str, cache_dir: Path, threads: int) -> NetworkEmbedder:
    return NetworkEmbedder(network, make_runner(network, backend, precision, cache_dir, threads))
