"""Errors raised by the feature store (schema v1, see docs/ARCHITECTURE.md "Store layout").

Every mismatch names both the expected and the found value, so a refused store says why.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every feature-store error."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store (or manifest) exists at the given path."""


class StoreMismatchError(StoreError):
    """A store exists but differs from what the caller expects (schema, shapes, manifest, views, ...)."""

    def __init__(self, path: object, what: str, *, expected: object, found: object) -> None:
        self.what, self.expected, self.found = what, expected, found
        super().__init__(f"{path}: {what} mismatch: expected {expected!r}, found {found!r}")


class StoreCorruptionError(StoreError):
    """Stored bytes fail their checksum (crc32c) or cannot be decoded."""


class StoreReadOnlyError(StoreError):
    """A write was attempted on a store opened with mode='r'."""


class ManifestError(StoreError, ValueError):
    """manifest.parquet is missing columns, has wrong types, or is internally inconsistent."""
