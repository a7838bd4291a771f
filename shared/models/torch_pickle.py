"""Read legacy (pre-zip) PyTorch ``torch.save`` files with only ``pickle`` and ``numpy``.

The workers must not depend on torch (a ~1 GB install) just to read one set of pretrained
weights, so this module re-implements the small part of ``torch.load`` needed for a state dict
saved in the legacy format (the default before torch 1.6). The layout of such a file is::

    pickle(MAGIC_NUMBER) pickle(PROTOCOL_VERSION) pickle(sys_info)
    pickle(state_dict)            # storages appear as persistent ids, tensors as rebuild calls
    pickle([storage keys])        # the order in which the raw storage payloads follow
    for each key: int64 little-endian element count, then count * itemsize raw bytes

Unpickling is restricted: only ``collections.OrderedDict``, the torch tensor-rebuild functions
and the torch storage classes resolve, each to a local stand-in, so a malicious file cannot run
code through pickled globals.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "TorchPickleError",
    "UnsafePickleError",
    "load_legacy_torch_state_dict",
]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
_INT64 = struct.Struct("<q")


class TorchPickleError(ValueError):
    """The file is not a legacy PyTorch state dict this reader can decode."""


class UnsafePickleError(TorchPickleError, pickle.UnpicklingError):
    """The pickle references a global outside the small allow-list."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: only its element type matters here."""

    torch_name: str
    dtype: np.dtype
    # bfloat16 has no numpy dtype: it is read as raw uint16 and widened afterwards.
    convert: Callable[[np.ndarray], np.ndarray] | None = None


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    # bfloat16 is the upper half of an IEEE float32, so widening is exact.
    return (raw.astype(np.uint32) << 16).view(np.float32)


_STORAGE_TYPES: dict[str, _StorageType] = {
    st.torch_name: st
    for st in (
        _StorageType("DoubleStorage", np.dtype(np.float64)),
        _StorageType("FloatStorage", np.dtype(np.float32)),
        _StorageType("HalfStorage", np.dtype(np.float16)),
        _StorageType("BFloat16Storage", np.dtype(np.uint16), _bfloat16_to_float32),
        _StorageType("LongStorage", np.dtype(np.int64)),
        _StorageType("IntStorage", np.dtype(np.int32)),
        _StorageType("ShortStorage", np.dtype(np.int16)),
        _StorageType("CharStorage", np.dtype(np.int8)),
        _StorageType("ByteStorage", np.dtype(np.uint8)),
        _StorageType("BoolStorage", np.dtype(np.bool_)),
        _StorageType("ComplexFloatStorage", np.dtype(np.complex64)),
        _StorageType("ComplexDoubleStorage", np.dtype(np.complex128)),
    )
}


@dataclass(frozen=True)
class _StorageRef:
    """A (possibly viewed) slice of a root storage whose bytes come after the main pickle."""

    root_key: str
    storage_type: _StorageType
    root_numel: int
    offset: int  # in elements, into the root storage
    numel: int


@dataclass(frozen=True)
class _LazyTensor:
    """What ``_rebuild_tensor*`` returns until the storage payloads have been read."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _check_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise TorchPickleError(f"{what} must be a tuple of non-negative ints, got {value!r}")
    return value


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _LazyTensor:
    if not isinstance(storage, _StorageRef):
        raise TorchPickleError("tensor does not reference a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise TorchPickleError(f"bad storage offset {storage_offset!r}")
    shape = _check_int_tuple(size, "tensor size")
    strides = _check_int_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise TorchPickleError(f"size {shape} and stride {strides} differ in rank")
    return _LazyTensor(storage, storage_offset, shape, strides)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _LazyTensor:
    # Autograd flags and hooks are meaningless for plain arrays.
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): st for name, st in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals and records storage references."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: only torch state dicts are supported"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', storage_type, root_key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            # A 'module' pid means torch.save(model) rather than torch.save(model.state_dict()).
            raise TorchPickleError(f"unsupported persistent id {pid!r}; expected a state-dict storage")
        _, storage_type, root_key, _location, root_numel, *rest = pid
        return self._storage_ref(storage_type, root_key, root_numel, rest[0] if rest else None)

    def _storage_ref(self, storage_type: Any, root_key: Any, root_numel: Any, view_metadata: Any) -> _StorageRef:
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"unknown storage type {storage_type!r}")
        if not isinstance(root_key, str) or not isinstance(root_numel, int) or root_numel < 0:
            raise TorchPickleError(f"malformed storage reference {root_key!r}, {root_numel!r}")
        known = self.storages.get(root_key)
        if known is not None and (known.storage_type, known.root_numel) != (storage_type, root_numel):
            raise TorchPickleError(f"storage {root_key} is declared with two different types or sizes")
        root = _StorageRef(root_key, storage_type, root_numel, 0, root_numel)
        self.storages[root_key] = root
        if view_metadata is None:
            return root
        _view_key, offset, numel = view_metadata
        if not (isinstance(offset, int) and isinstance(numel, int) and 0 <= offset <= offset + numel):
            raise TorchPickleError(f"malformed storage view {view_metadata!r}")
        if offset + numel > root_numel:
            raise TorchPickleError(f"storage view {view_metadata!r} exceeds its root storage")
        return _StorageRef(root_key, storage_type, root_numel, offset, numel)


def _load_restricted(f: BinaryIO, what: str) -> tuple[Any, _RestrictedUnpickler]:
    unpickler = _RestrictedUnpickler(f)
    try:
        return unpickler.load(), unpickler
    except TorchPickleError:
        raise
    except Exception as exc:  # pickle raises many unrelated types on garbage input
        raise TorchPickleError(f"corrupt legacy torch file while reading the {what}: {exc}") from exc


def _read_header(f: BinaryIO, path: Path) -> bool:
    """Validate the three header pickles; returns whether payloads are little-endian."""
    # Same test as torch's own _is_zipfile: a zip archive starts with a local file header.
    if f.read(4) == b"PK\x03\x04":
        raise TorchPickleError(
            f"{path} uses the zip-based torch.save format (the torch >= 1.6 default); "
            "only the legacy format is supported"
        )
    f.seek(0)
    magic, _ = _load_restricted(f, "magic number")
    if magic != LEGACY_MAGIC_NUMBER:
        raise TorchPickleError(f"{path} is not a legacy torch file: wrong magic number {magic!r}")
    protocol, _ = _load_restricted(f, "protocol version")
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise TorchPickleError(f"{path}: unsupported legacy protocol version {protocol!r}")
    sys_info, _ = _load_restricted(f, "sys_info")
    return bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True


def _read_storages(
    f: BinaryIO, storages: dict[str, _StorageRef], little_endian: bool, file_size: int
) -> dict[str, np.ndarray]:
    keys, _ = _load_restricted(f, "storage key list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TorchPickleError("storage key list is malformed")
    data: dict[str, np.ndarray] = {}
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise TorchPickleError(f"payload for storage {key} that no tensor references")
        header = f.read(_INT64.size)
        if len(header) != _INT64.size:
            raise TorchPickleError(f"file truncated before storage {key}")
        (numel,) = _INT64.unpack(header)
        if numel != ref.root_numel:
            raise TorchPickleError(f"storage {key} holds {numel} elements, pickle declared {ref.root_numel}")
        dtype = ref.storage_type.dtype.newbyteorder("<" if little_endian else ">")
        nbytes = numel * dtype.itemsize
        # Check before reading so a corrupt count cannot trigger a huge allocation.
        if nbytes > file_size - f.tell():
            raise TorchPickleError(f"file truncated inside storage {key}")
        data[key] = np.frombuffer(f.read(nbytes), dtype=dtype)
    missing = set(storages) - set(data)
    if missing:
        raise TorchPickleError(f"no payload for storages {sorted(missing)}")
    return data


def _materialise(tensor: _LazyTensor, storages: dict[str, np.ndarray]) -> np.ndarray:
    ref = tensor.storage
    storage_type = ref.storage_type
    flat = storages[ref.root_key][ref.offset : ref.offset + ref.numel]
    if 0 in tensor.shape:
        array = np.zeros(tensor.shape, dtype=flat.dtype)
    else:
        # as_strided performs no bounds checks, so prove the last element lies inside the storage.
        last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride, strict=True))
        if last >= flat.size:
            raise TorchPickleError(f"tensor of shape {tensor.shape} / stride {tensor.stride} overruns its storage")
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :],
            shape=tensor.shape,
            strides=tuple(s * itemsize for s in tensor.stride),
            writeable=False,
        )
        array = view
    # astype copies into a fresh C-ordered native-endian array; unlike np.ascontiguousarray it
    # keeps 0-d tensors (e.g. num_batches_tracked) 0-d.
    array = array.astype(array.dtype.newbyteorder("="), order="C", copy=True)
    if storage_type.convert is not None:
        array = storage_type.convert(array)
    return array


def load_legacy_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a legacy-format ``torch.save(state_dict)`` file as contiguous numpy arrays.

    Raises ``TorchPickleError`` (a ``ValueError``) for zip-format files, a wrong magic number,
    corrupt or truncated data, and ``UnsafePickleError`` for disallowed pickled globals.
    """
    path = Path(path)
    with path.open("rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        little_endian = _read_header(f, path)
        state, unpickler = _load_restricted(f, "state dict")
        if not isinstance(state, dict):
            raise TorchPickleError(f"{path} does not contain a state dict (got {type(state).__name__})")
        storages = _read_storages(f, unpickler.storages, little_endian, file_size)
    result: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, _LazyTensor):
            raise TorchPickleError(f"state dict entry {name!r} is not a tensor")
        result[name] = _materialise(value, storages)
    return result
