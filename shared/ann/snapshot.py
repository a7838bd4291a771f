"""Snapshots: the ids, the labels and the serialised faiss index (or the exact matrix), so a
restarted worker loads one and replays the log after it instead of rebuilding."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import BinaryIO, Self

import numpy as np

from shared.ann.ivf import TrainedIvf, _faiss
from shared.ann.params import AnnParams, FetchVectors
from shared.ann.rows import Rows

SNAPSHOT_VERSION = 1


class Snapshots(Rows):
    def save(self, target: str | Path | BinaryIO) -> None:
        """Write a snapshot (numpy .npz, uncompressed) to a path or a binary stream."""
        self._poll()
        n = len(self._ids)
        if any("\n" in i for i in self._ids):
            raise ValueError("image ids with a newline cannot be saved")
        meta = {
            "version": SNAPSHOT_VERSION,
            "dim": self.dim,
            "params": asdict(self.params),
            "hold": self.hold,
            "next_label": self._next_label,
            "trained_n": self._ann.trained_n if self._ann else 0,
        }
        arrays: dict[str, np.ndarray] = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "ids": np.frombuffer("\n".join(self._ids).encode(), dtype=np.uint8),
            "labels": self._labels[:n],
        }
        if self._matrix is not None:
            arrays["matrix"] = self._matrix[:n]
        if self._held is not None:
            arrays["held"] = self._held[:n]
        if self._ann is not None:
            arrays["index"] = _faiss().serialize_index(self._ann.index)
        if isinstance(target, str | Path):
            with open(target, "wb") as fh:
                np.savez(fh, **arrays)
        else:
            np.savez(target, **arrays)

    @classmethod
    def load(
        cls,
        source: str | Path | BinaryIO | bytes,
        fetch_vectors: FetchVectors | None = None,
        params: AnnParams | None = None,
    ) -> Self:
        """An index from a snapshot; `params` (default: the saved ones) may change the tuning."""
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        with np.load(source, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes())
            if meta["version"] != SNAPSHOT_VERSION:
                raise ValueError(f"snapshot version {meta['version']} is not {SNAPSHOT_VERSION}")
            known = {f.name for f in fields(AnnParams)}  # a newer version's extra tuning is ignored
            saved = AnnParams(**{k: v for k, v in meta["params"].items() if k in known})
            index = cls(meta["dim"], fetch_vectors, params or saved, hold=meta["hold"], capacity=1)
            raw_ids = data["ids"].tobytes().decode()
            ids = raw_ids.split("\n") if raw_ids else []
            labels = data["labels"].astype(np.int64)
            index._ids = ids
            index._row = {i: r for r, i in enumerate(ids)}
            index._labels = labels.copy()
            index._next_label = int(meta["next_label"])
            index._row_of = np.full(max(index._next_label, 1), -1, dtype=np.int64)
            index._row_of[labels] = np.arange(len(labels))
            index._alive = np.packbits(index._row_of >= 0, bitorder="little")
            index._matrix = data["matrix"].copy() if "matrix" in data.files else None
            index._held = data["held"].copy() if "held" in data.files else None
            if "index" in data.files:
                index._ann = TrainedIvf(_faiss().deserialize_index(data["index"]), int(meta["trained_n"]))
                index._list_of = index._ann.lists_of(len(index._row_of))
            else:
                index._list_of = np.full(len(index._row_of), -1, dtype=np.int32)
        index._maybe_build()
        return index
