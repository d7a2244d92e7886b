"""Errors raised by the feature store (schema v2, see docs/ARCHITECTURE.md "Store layout").

Every mismatch names both the expected and the found value, so a refused store says why.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every feature-store error."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store (or manifest) exists at the given path."""


class StoreMismatchError(StoreError):
    """A store exists but differs from what the caller expects (schema, shapes, manifest, views, ...)."""

    def __init__(self, path: object, what: str, *, expected: object, found: object, hint: str = "") -> None:
        self.what, self.expected, self.found = what, expected, found
        super().__init__(f"{path}: {what} mismatch: expected {expected!r}, found {found!r}"
                         + (f". {hint}" if hint else ""))


class StoreCorruptionError(StoreError):
    """Stored bytes fail their checksum (crc32c) or cannot be decoded."""


class StoreReadOnlyError(StoreError):
    """A write was attempted on a store opened with mode='r'."""


class ManifestError(StoreError, ValueError):
    """manifest.parquet is missing columns, has wrong types, or is internally inconsistent."""


class StorageWriteError(StoreError, OSError):
    """Writing to disk failed (no space left, quota, I/O error): names the path, the free space and what
    was kept. An OSError too, with the original errno, so callers that handle OSError still do."""

    def __init__(self, message: str, *, path: object = None, errno_code: int | None = None,
                 free_bytes: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_code
        self.filename = None if path is None else str(path)
        self.path, self.free_bytes = path, free_bytes

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):  # survives pickling (Ray ships worker exceptions to the driver)
        return (_rebuild_storage_write_error, (self.args[0], self.path, self.errno, self.free_bytes))


def _rebuild_storage_write_error(message, path, errno_code, free_bytes) -> StorageWriteError:
    return StorageWriteError(message, path=path, errno_code=errno_code, free_bytes=free_bytes)


class DamagedFileError(StoreError, ValueError):
    """A file the pipeline wrote is truncated, altered or unreadable. The message names the file, what is
    wrong and how to recover; nothing is refitted or retrained silently in its place."""

    def __init__(self, path: object, problem: str, recovery: str) -> None:
        self.path, self.problem, self.recovery = path, problem, recovery
        super().__init__(f"{path} is damaged: {problem}. {recovery}")


class DamagedManifestError(DamagedFileError, ManifestError):
    """manifest.parquet cannot be read or validated (a DamagedFileError and a ManifestError)."""
