"""Normalized Hadamard matrices for Hadamard whitening and PHI-S (arXiv 2410.01680).

PHI-S rotates a teacher's principal components with a normalized Hadamard matrix H (entries ±1/√C,
H Hᵀ = I) so that every output channel carries the same variance. H must exist for the teacher's width
C, so this module builds one from classical constructions:

- Sylvester: H_2n = [[H_n, H_n], [H_n, -H_n]], orders 2^k.
- Paley I (Paley 1933): order q + 1 for a prime q ≡ 3 (mod 4), H = I + [[0, 1ᵀ], [-1, Q]] with Q the
  Jacobsthal matrix Q_ab = χ(a − b) (χ the quadratic character mod q).
- Paley II: order 2(q + 1) for a prime q ≡ 1 (mod 4), from the symmetric conference matrix
  S = [[0, 1ᵀ], [1, Q]]: H = S ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]].
- Kronecker products of Hadamard matrices are Hadamard.

`hadamard_matrix` searches C = 2^k · m with m = 1, one Paley order, or a product of two Paley orders
(fewest Paley factors first, then the smallest Paley matrix), and never falls back to anything that is
not a Hadamard matrix: a width without a construction raises ValueError naming the nearest widths that
have one. Different valid H give different normalized targets, so matrices are cached on disk (int8 ±1
plus the construction name) and verified orthogonal when loaded.

Shape legend: C width (matrix order).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from store_schema import location

SYLVESTER = "sylvester"
PALEY1 = "paley1"
PALEY2 = "paley2"
_KRON = "⊗"


@dataclass(frozen=True)
class Factor:
    """One Kronecker factor: ``kind`` is sylvester (param = order) or paley1/paley2 (param = prime q)."""

    kind: str
    param: int

    @property
    def order(self) -> int:
        if self.kind == SYLVESTER:
            return self.param
        return self.param + 1 if self.kind == PALEY1 else 2 * (self.param + 1)

    def __str__(self) -> str:
        return f"{self.kind}({self.param})"


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@lru_cache(maxsize=None)
def _paley_factor(order: int) -> Factor | None:
    """The Paley construction of exactly this order (Paley I preferred), or None."""
    if _is_prime(order - 1) and (order - 1) % 4 == 3:
        return Factor(PALEY1, order - 1)
    if order % 2 == 0 and _is_prime(order // 2 - 1) and (order // 2 - 1) % 4 == 1:
        return Factor(PALEY2, order // 2 - 1)
    return None


def _paley_orders_dividing(width: int) -> list[int]:
    """Paley orders m > 2 (ascending) with width / m an integer."""
    return [m for m in range(4, width + 1, 2) if width % m == 0 and _paley_factor(m) is not None]


def find_construction(width: int) -> tuple[Factor, ...] | None:
    """Kronecker factors of a Hadamard matrix of order ``width``, or None if the search finds none.

    Preference: pure Sylvester; else Sylvester ⊗ one Paley matrix (smallest Paley order first); else
    Sylvester ⊗ two Paley matrices (smallest largest factor first).
    """
    if width < 1:
        return None
    if _is_pow2(width):
        return (Factor(SYLVESTER, width),)
    if width % 4 != 0:
        return None

    def with_sylvester(rest: int, *paley: Factor) -> tuple[Factor, ...]:
        return ((Factor(SYLVESTER, rest),) if rest > 1 else ()) + paley

    orders = _paley_orders_dividing(width)
    for m in orders:
        if _is_pow2(width // m):
            return with_sylvester(width // m, _paley_factor(m))
    best: tuple[int, tuple[Factor, ...]] | None = None
    for a in orders:
        for b in orders:
            if b < a or width % (a * b) != 0 or not _is_pow2(width // (a * b)):
                continue
            if best is None or b < best[0]:
                best = (b, with_sylvester(width // (a * b), _paley_factor(a), _paley_factor(b)))
    return None if best is None else best[1]


def construction_name(factors: tuple[Factor, ...]) -> str:
    """E.g. ``"sylvester(32)⊗paley1(11)"`` (Paley factors named by their prime q)."""
    return _KRON.join(str(f) for f in factors)


def nearest_valid_widths(width: int) -> tuple[int | None, int | None]:
    """The nearest widths below and above ``width`` (exclusive) that have a construction."""
    below = next((w for w in range(width - 1, 0, -1) if find_construction(w) is not None), None)
    above = next(w for w in range(width + 1, 2 * width + 8) if find_construction(w) is not None)
    return below, above


def _quadratic_character(q: int) -> np.ndarray:
    """χ(a) for a in 0..q-1: 0 at 0, +1 on quadratic residues, −1 elsewhere."""
    chi = -np.ones(q, dtype=np.int8)
    chi[(np.arange(1, q, dtype=np.int64) ** 2) % q] = 1
    chi[0] = 0
    return chi


def _jacobsthal(q: int) -> np.ndarray:
    idx = np.arange(q)
    return _quadratic_character(q)[(idx[:, None] - idx[None, :]) % q]


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.int8)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _paley1(q: int) -> np.ndarray:
    conf = np.zeros((q + 1, q + 1), dtype=np.int8)
    conf[0, 1:] = 1
    conf[1:, 0] = -1
    conf[1:, 1:] = _jacobsthal(q)
    return (np.eye(q + 1, dtype=np.int8) + conf).astype(np.int8)


def _paley2(q: int) -> np.ndarray:
    conf = np.zeros((q + 1, q + 1), dtype=np.int8)
    conf[0, 1:] = 1
    conf[1:, 0] = 1
    conf[1:, 1:] = _jacobsthal(q)
    plus = np.array([[1, 1], [1, -1]], dtype=np.int8)
    zero = np.array([[1, -1], [-1, -1]], dtype=np.int8)
    return (np.kron(conf, plus) + np.kron(np.eye(q + 1, dtype=np.int8), zero)).astype(np.int8)


_BUILDERS = {SYLVESTER: _sylvester, PALEY1: _paley1, PALEY2: _paley2}


def _is_hadamard(h_CC: np.ndarray) -> bool:
    """Exact check of H Hᵀ = C·I for a ±1 matrix (float32 products of ±1 sums are exact below 2^24)."""
    c = h_CC.shape[0]
    if h_CC.shape != (c, c) or not np.all(np.abs(h_CC) == 1):
        return False
    h32 = h_CC.astype(np.float32)
    return bool(np.array_equal(h32 @ h32.T, np.float32(c) * np.eye(c, dtype=np.float32)))


def build_hadamard(factors: tuple[Factor, ...]) -> np.ndarray:
    """The int8 ±1 Hadamard matrix of the given Kronecker factors (each factor verified)."""
    h = np.ones((1, 1), dtype=np.int8)
    for f in factors:
        part = _BUILDERS[f.kind](f.param)
        assert _is_hadamard(part), f"construction {f} did not give a Hadamard matrix"
        h = np.kron(h, part).astype(np.int8)
    return h


def _no_construction_error(width: int) -> ValueError:
    below, above = nearest_valid_widths(max(width, 1))
    why = "is not 1, 2 or a multiple of 4" if width % 4 != 0 and width > 2 else "has no known construction here"
    return ValueError(
        f"no Hadamard matrix for width {width} (it {why}); nearest widths with a construction: "
        f"{below} below and {above} above"
    )


def _cache_paths(cache_dir, width: int):
    return location.join(cache_dir, f"{width}.npy"), location.join(cache_dir, f"{width}.json")


def _load_cached(cache_dir, width: int) -> tuple[np.ndarray, str] | None:
    npy, meta = _cache_paths(cache_dir, width)
    if not location.exists(npy):
        return None
    if not location.exists(meta):
        raise ValueError(f"Hadamard cache {npy} has no construction record {meta}; delete both to rebuild")
    h_CC = np.load(io.BytesIO(location.read_bytes(npy)), allow_pickle=False)
    name = json.loads(location.read_bytes(meta))["construction"]
    if h_CC.dtype != np.int8 or h_CC.shape != (width, width) or not _is_hadamard(h_CC):
        raise ValueError(f"cached matrix {npy} is not an int8 Hadamard matrix of order {width}; delete it to rebuild")
    return h_CC, name


def _save_cached(cache_dir, width: int, h_CC: np.ndarray, name: str) -> None:
    npy, meta = _cache_paths(cache_dir, width)
    buf = io.BytesIO()
    np.save(buf, h_CC)
    # the record first: a matrix file never exists without its name (each write is whole or nothing)
    location.write_bytes(meta, json.dumps({"width": width, "construction": name}).encode())
    location.write_bytes(npy, buf.getvalue())


def hadamard_matrix(width: int, *, cache_dir: Path | None = None) -> tuple[np.ndarray, str]:
    """Normalized Hadamard matrix H_CC (float64, entries ±1/√C, H Hᵀ = I) and its construction name.

    With ``cache_dir``, a matrix stored there for this width is loaded (and verified) instead of
    rebuilt, and a newly built one is stored. Raises ValueError for a width without a construction.
    """
    if width < 1:
        raise ValueError(f"Hadamard width must be positive, got {width}")
    cached = _load_cached(location.as_location(cache_dir), width) if cache_dir is not None else None
    if cached is not None:
        h_CC, name = cached
    else:
        factors = find_construction(width)
        if factors is None:
            raise _no_construction_error(width)
        h_CC, name = build_hadamard(factors), construction_name(factors)
        if cache_dir is not None:
            _save_cached(Path(cache_dir), width, h_CC, name)
    return h_CC.astype(np.float64) / np.sqrt(width), name
