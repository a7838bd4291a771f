"""The embedded blob store: one file per key under a root directory."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from shared.blobs import BlobStore, BlobStoreError, Data, _keys, validate_key, validate_prefix

# A temporary file this old is a leftover of a writer that died between creating and renaming it.
# Younger ones may belong to a put in progress, whatever age a sweep asks for.
TEMP_FILE_GRACE_S = 3600.0
_PUT_ATTEMPTS = 5
COPY_BUFFER = 4 << 20


class FileBlobStore(BlobStore):
    def __init__(self, root: Path, fsync: bool = True, max_concurrency: int = 16) -> None:
        super().__init__(max_concurrency)
        self.root = Path(root).absolute()
        self.fsync = fsync
        self.url = self.root.as_uri()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: Data) -> None:
        self._write(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as source:
            self._write(key, lambda fh: shutil.copyfileobj(source, fh, COPY_BUFFER))

    def get_file(self, key: str, path: Path) -> bool:
        try:
            with open(self._path(key), "rb") as source, open(path, "wb") as fh:
                shutil.copyfileobj(source, fh, COPY_BUFFER)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return False
        return True

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        path = self._path(key)
        new_folder = False
        # A concurrent delete or sweep may remove the (then empty) directory between our mkdir and
        # creating the temporary file in it: create it again and retry.
        for _ in range(_PUT_ATTEMPTS):
            new_folder = new_folder or not path.parent.is_dir()
            path.parent.mkdir(parents=True, exist_ok=True)
            # Dot-prefixed: no valid key starts with a dot, so this name can never be a blob. The
            # name is cut so that a 255-character key segment still leaves room for the suffix.
            tmp = path.parent / f".{path.name[:200]}.{secrets.token_hex(8)}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileNotFoundError:
                continue
            try:
                with open(fd, "wb") as fh:
                    fill(fh)
                    if self.fsync:
                        fh.flush()
                        os.fsync(fh.fileno())
                # Atomic on POSIX: readers see the old value or the new one, never a partial file;
                # concurrent puts of one key leave exactly one writer's complete value.
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            if self.fsync:
                self._fsync_dirs(path.parent, to_root=new_folder)
            return
        raise BlobStoreError(f"could not create {path.parent} for {key!r}")

    def _fsync_dirs(self, directory: Path, to_root: bool) -> None:
        # The rename is durable once its directory is flushed; a folder this put created is durable
        # once its parent is, and so on up to the root (once per new folder, e.g. per upload job).
        while True:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if not to_root or directory == self.root:
                return
            directory = directory.parent

    def get(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            # A directory ("uploads") or a path through a file is not a blob: absent, like on S3.
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, keys: str | Iterable[str]) -> None:
        emptied: set[Path] = set()
        for key in _keys(keys):
            path = self._path(key)
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            emptied.add(path.parent)
        # Once per folder after the unlinks, not once per file: a chunk's 52 uploads share one folder,
        # and each failed rmdir of a folder not yet empty was a syscall and an exception.
        for directory in sorted(emptied, key=lambda d: len(d.parts), reverse=True):
            self._prune(directory)

    def _prune(self, directory: Path) -> None:
        # Remove now-empty parents up to the root, so per-job upload folders do not pile up.
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone): stop
                return
            directory = directory.parent

    def sweep(self, prefix: str, older_than_s: float) -> int:
        base = self.root / validate_prefix(prefix)
        now = time.time()
        cutoff, temp_cutoff = now - older_than_s, now - max(older_than_s, TEMP_FILE_GRACE_S)
        removed = 0
        # Bottom-up, so a folder emptied by this sweep is removed right after its files.
        for dirpath, _dirnames, filenames in os.walk(base, topdown=False):
            for name in filenames:
                path = os.path.join(dirpath, name)
                temp = name.startswith(".")
                try:
                    if os.lstat(path).st_mtime >= (temp_cutoff if temp else cutoff):
                        continue
                    os.unlink(path)
                except FileNotFoundError:
                    continue  # deleted or replaced meanwhile
                removed += 0 if temp else 1
            if dirpath != str(base):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        if base.is_dir():
            self._prune(base)
        return removed
