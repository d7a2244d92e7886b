"""The normalization variants compared by PHI-S (arXiv 2410.01680) and how each is fitted.

Every variant is an invertible affine map y' = W (y − μ) fitted from a teacher's float64 moments
(mean μ, population covariance Σ = U Λ Uᵀ); the loss-side variants keep raw targets (μ = 0, W = I) and
differ only in their loss:

| variant | W | W⁻¹ |
|---|---|---|
| mse, cosine, hyb_mse, hyb_smoothl1 | I (μ = 0) | I |
| global_std | I / σ_g (μ_g: one scalar over all tokens and channels) | σ_g I |
| standardize | diag(1 / σ_c) | diag(σ_c) |
| pca_w | Λ^-1/2 Uᵀ | U Λ^1/2 |
| zca | U Λ^-1/2 Uᵀ | U Λ^1/2 Uᵀ |
| hca | H Λ^-1/2 Uᵀ | U Λ^1/2 Hᵀ |
| phis | α H Uᵀ, α = (trace Σ / C)^-1/2 | α⁻¹ U Hᵀ |

Floor: whitening and standardization divide by eigenvalues / variances, which are ~0 on rank-deficient
teachers and dead channels. Each λ (or σ_c²) is replaced by max(λ, eig_floor · mean λ) with
mean λ = trace Σ / C, so W stays finite and W⁻¹ is its exact inverse; directions above the floor come
out with unit variance, those below with variance λ / floor < 1. PHI-S divides by nothing but
trace Σ / C and needs no floor. A teacher with trace Σ = 0 (constant output) cannot be normalized.

Determinism: eigenvalues sorted descending, each eigenvector negated so that its largest-magnitude
component (lowest index on ties) is positive, so fitting the same statistics twice gives bit-identical
matrices regardless of the signs LAPACK returns.

Shape legend: D channels (= C, the teacher width).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from stages.normalize.hadamard import hadamard_matrix
from stages.normalize.losses import LossKind
from stages.stats import Moments

DEFAULT_EIG_FLOOR = 1e-6


class NormVariant(str, Enum):
    """A normalization variant; ``.value`` is the CLI / config name (``--norm phis``)."""

    MSE = "mse"
    COSINE = "cosine"
    HYB_MSE = "hyb_mse"
    HYB_SMOOTHL1 = "hyb_smoothl1"
    GLOBAL_STD = "global_std"
    STANDARDIZE = "standardize"
    PCA_W = "pca_w"
    ZCA = "zca"
    HCA = "hca"
    PHIS = "phis"

    @property
    def is_affine(self) -> bool:
        """True for variants that transform the targets (and train with MSE)."""
        return self not in _LOSS_SIDE

    @property
    def loss(self) -> LossKind:
        """The loss the student trains with against this variant's targets."""
        return _LOSS_SIDE.get(self, LossKind.MSE)

    @classmethod
    def parse(cls, name: "str | NormVariant") -> "NormVariant":
        """The variant called ``name``; unknown names raise ValueError listing the valid ones."""
        try:
            return cls(name)
        except ValueError:
            valid = ", ".join(v.value for v in cls)
            raise ValueError(f"unknown normalization variant {name!r}; valid: {valid}") from None


_LOSS_SIDE: dict[NormVariant, LossKind] = {
    NormVariant.MSE: LossKind.MSE,
    NormVariant.COSINE: LossKind.COSINE,
    NormVariant.HYB_MSE: LossKind.HYB_MSE,
    NormVariant.HYB_SMOOTHL1: LossKind.HYB_SMOOTHL1,
}


@dataclass(frozen=True)
class AffineFit:
    """μ_D, W_DD, W_inv_DD (float64) and the Hadamard construction used (None without one)."""

    mu_D: np.ndarray
    W_DD: np.ndarray
    W_inv_DD: np.ndarray
    construction: str | None = None


def sign_canonical(U_DD: np.ndarray) -> np.ndarray:
    """Eigenvectors (columns) negated so each one's largest-magnitude entry (lowest index on ties) is > 0."""
    pivot_D = np.argmax(np.abs(U_DD), axis=0)
    signs_D = np.where(U_DD[pivot_D, np.arange(U_DD.shape[1])] < 0, -1.0, 1.0)
    return U_DD * signs_D


def eigh_descending(cov_DD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and sign-canonical eigenvectors of a covariance."""
    sym_DD = 0.5 * (cov_DD + cov_DD.T)
    lam_D, U_DD = np.linalg.eigh(sym_DD)
    lam_D, U_DD = lam_D[::-1], U_DD[:, ::-1]
    return np.clip(lam_D, 0.0, None).copy(), sign_canonical(np.ascontiguousarray(U_DD))


def _mean_eigenvalue(cov_DD: np.ndarray) -> float:
    mean_lam = float(np.trace(cov_DD)) / cov_DD.shape[0]
    if not np.isfinite(mean_lam) or mean_lam <= 0.0:
        raise ValueError(f"statistics have total variance {mean_lam * cov_DD.shape[0]!r}: "
                         "a constant or non-finite teacher output cannot be normalized")
    return mean_lam


def _fit_global_std(m: Moments, cov_DD: np.ndarray) -> AffineFit:
    mu = float(m.mean_D.mean())
    # variance over all tokens and channels = mean_c (Σ_cc + (μ_c − μ_g)²)
    var = float(np.mean(np.diag(cov_DD) + (m.mean_D - mu) ** 2))
    if not np.isfinite(var) or var <= 0.0:
        raise ValueError(f"statistics have global variance {var!r}: the teacher output is constant")
    sigma, eye_DD = np.sqrt(var), np.eye(m.dim)
    return AffineFit(np.full(m.dim, mu), eye_DD / sigma, eye_DD * sigma)


def _fit_standardize(m: Moments, cov_DD: np.ndarray, eig_floor: float) -> AffineFit:
    var_D = np.clip(np.diag(cov_DD), 0.0, None)
    sigma_D = np.sqrt(np.maximum(var_D, eig_floor * _mean_eigenvalue(cov_DD)))
    return AffineFit(m.mean_D.copy(), np.diag(1.0 / sigma_D), np.diag(sigma_D))


def _fit_spectral(variant: NormVariant, m: Moments, cov_DD: np.ndarray, eig_floor: float,
                  hadamard_cache: Path | None) -> AffineFit:
    mean_lam = _mean_eigenvalue(cov_DD)
    lam_D, U_DD = eigh_descending(cov_DD)
    root_D = np.sqrt(np.maximum(lam_D, eig_floor * mean_lam))
    construction = None
    if variant in (NormVariant.HCA, NormVariant.PHIS):
        H_DD, construction = hadamard_matrix(m.dim, cache_dir=hadamard_cache)
    if variant is NormVariant.PCA_W:
        W, W_inv = U_DD.T / root_D[:, None], U_DD * root_D
    elif variant is NormVariant.ZCA:
        W, W_inv = (U_DD / root_D) @ U_DD.T, (U_DD * root_D) @ U_DD.T
    elif variant is NormVariant.HCA:
        W, W_inv = H_DD @ (U_DD.T / root_D[:, None]), (U_DD * root_D) @ H_DD.T
    else:  # PHIS
        alpha = mean_lam ** -0.5
        W, W_inv = alpha * (H_DD @ U_DD.T), (U_DD @ H_DD.T) / alpha
    return AffineFit(m.mean_D.copy(), W, W_inv, construction)


def fit_affine(
    variant: NormVariant | str,
    moments: Moments,
    *,
    hadamard_cache: Path | None = None,
    eig_floor: float = DEFAULT_EIG_FLOOR,
) -> AffineFit:
    """Fit (μ, W, W⁻¹) of ``variant`` from float64 moments (population covariance).

    ``eig_floor`` is relative to the mean eigenvalue (see the module docstring); ``hadamard_cache`` is
    the directory of cached Hadamard matrices (hca, phis). Raises ValueError for empty statistics, a
    constant teacher, or a width without a Hadamard matrix (hca, phis).
    """
    variant = NormVariant.parse(variant)
    if not 0.0 < eig_floor < 1.0:
        raise ValueError(f"eig_floor is relative to the mean eigenvalue and must be in (0, 1), got {eig_floor}")
    if not variant.is_affine:
        eye_DD = np.eye(moments.dim)
        return AffineFit(np.zeros(moments.dim), eye_DD, eye_DD.copy())
    if moments.count < 1:
        raise ValueError(f"cannot fit {variant.value} from empty statistics (count {moments.count})")
    cov_DD = moments.covariance()
    if variant is NormVariant.GLOBAL_STD:
        return _fit_global_std(moments, cov_DD)
    if variant is NormVariant.STANDARDIZE:
        return _fit_standardize(moments, cov_DD, eig_floor)
    return _fit_spectral(variant, moments, cov_DD, eig_floor, hadamard_cache)
