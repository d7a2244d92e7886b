"""Mergeable float64 first and second moments (Welford / Chan et al. 1979).

Stage one computes one ``Moments`` per shard (summary tokens and patch tokens separately) from the
values *as stored*; the driver merges them exactly. Normalizers (PHI-S and the rest of the PHI-S paper's
list, arXiv 2410.01680) are fitted from the merged mean and covariance.

Merge rule for two partials a, b with n = n_a + n_b and δ = mean_b − mean_a:
    mean = mean_a + δ · n_b / n
    M2   = M2_a + M2_b + δ δᵀ · n_a n_b / n
so the covariance of the union is M2 / n (population) or M2 / (n − 1) (sample).

Shape legend: N rows (tokens), D channels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Count, mean and co-moment matrix (sum of outer products of deviations) of a set of vectors."""

    count: int
    mean_D: np.ndarray
    m2_DD: np.ndarray

    def __post_init__(self) -> None:
        assert self.mean_D.dtype == np.float64 and self.m2_DD.dtype == np.float64
        assert self.m2_DD.shape == (self.mean_D.shape[0],) * 2

    @property
    def dim(self) -> int:
        return int(self.mean_D.shape[0])

    @classmethod
    def empty(cls, dim: int) -> "Moments":
        return cls(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

    @classmethod
    def from_batch(cls, x_ND: np.ndarray) -> "Moments":
        """Two-pass moments of a batch, in float64 (the batch may be any float dtype)."""
        x_ND = np.asarray(x_ND, dtype=np.float64)
        if x_ND.ndim != 2:
            raise ValueError(f"expected a 2-D (tokens, channels) array, got shape {x_ND.shape}")
        n = x_ND.shape[0]
        if n == 0:
            return cls.empty(x_ND.shape[1])
        mean_D = x_ND.mean(axis=0)
        dev_ND = x_ND - mean_D
        return cls(n, mean_D, dev_ND.T @ dev_ND)

    def merge(self, other: "Moments") -> "Moments":
        """Exact combination of two partials (Chan et al.)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of width {self.dim} and {other.dim}")
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta_D = other.mean_D - self.mean_D
        mean_D = self.mean_D + delta_D * (other.count / n)
        m2_DD = self.m2_DD + other.m2_DD + np.outer(delta_D, delta_D) * (self.count * other.count / n)
        return Moments(n, mean_D, m2_DD)

    def update(self, x_ND: np.ndarray) -> "Moments":
        """Moments of the union of this set and a new batch."""
        return self.merge(Moments.from_batch(x_ND))

    @staticmethod
    def merge_all(parts: Iterable["Moments"], dim: int | None = None) -> "Moments":
        """Merge partials in the order given (fixed order gives bit-identical results)."""
        total: Moments | None = None if dim is None else Moments.empty(dim)
        for part in parts:
            total = part if total is None else total.merge(part)
        if total is None:
            raise ValueError("merge_all needs at least one partial or an explicit dim")
        return total

    def covariance(self, *, ddof: int = 0) -> np.ndarray:
        """Covariance matrix; population (ddof=0) by default, as the normalizers use."""
        if self.count - ddof <= 0:
            raise ValueError(f"covariance needs more than {ddof} samples, have {self.count}")
        return self.m2_DD / (self.count - ddof)

    def content_hash(self) -> str:
        """sha256 over count, mean and M2 bytes: identifies the statistics a normalizer came from."""
        h = hashlib.sha256()
        h.update(np.int64(self.count).tobytes())
        h.update(np.ascontiguousarray(self.mean_D, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(self.m2_DD, dtype="<f8").tobytes())
        return h.hexdigest()
