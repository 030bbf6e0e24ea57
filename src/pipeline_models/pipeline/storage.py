"""Blob storage for raw uploads and parsed text: an interface and a local-directory backend.

Writes are atomic (a temporary file renamed into place), so a crash mid-write leaves the
old blob or none, never half of one, and writing the same key twice is harmless. Reads
take a byte range, so a 10 MB document is read a batch at a time.

>>> import tempfile
>>> storage = LocalDirectoryStorage(tempfile.mkdtemp())
>>> storage.put("raw/u/abc", b"hello")
>>> storage.read("raw/u/abc", 1, 3)
b'ell'
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from pipeline_models.errors import StorageError

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


@runtime_checkable
class BlobStorage(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def writer(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    def read(self, key: str, offset: int = 0, size: int = -1) -> bytes: ...

    def open(self, key: str) -> BinaryIO: ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def sha256(self, key: str) -> str: ...

    def health(self) -> dict[str, object]: ...


def raw_key(user_id: object, file_sha256: str) -> str:
    """Where an upload's bytes live: content-addressed per user, so re-uploads are free."""
    return f"raw/{user_id}/{file_sha256}"


def parsed_key(document_id: object) -> str:
    """Where the parser's markdown for a document lives."""
    return f"parsed/{document_id}.md"


class LocalDirectoryStorage:
    """Blobs as files under a root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise StorageError(f"invalid blob key {key!r}: use letters, digits, '._-' and '/'")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        with self.writer(key) as out:
            out.write(data)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """A file to write the blob into; it appears under ``key`` only if the block succeeds."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "wb") as out:
                yield out
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def read(self, key: str, offset: int = 0, size: int = -1) -> bytes:
        try:
            with self._path(key).open("rb") as blob:
                blob.seek(offset)
                return blob.read(size)
        except FileNotFoundError:
            raise StorageError(f"blob {key!r} does not exist in {self.root}") from None

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise StorageError(f"blob {key!r} does not exist in {self.root}") from None

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise StorageError(f"blob {key!r} does not exist in {self.root}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with self.open(key) as blob:
            while piece := blob.read(1 << 20):
                digest.update(piece)
        return digest.hexdigest()

    def health(self) -> dict[str, object]:
        try:
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".health."):
                pass
        except OSError as error:
            return {"ok": False, "backend": "local", "root": str(self.root), "error": str(error)}
        return {"ok": True, "backend": "local", "root": str(self.root)}

    def __repr__(self) -> str:
        return f"LocalDirectoryStorage({str(self.root)!r})"


__all__ = ["BlobStorage", "LocalDirectoryStorage", "parsed_key", "raw_key"]
