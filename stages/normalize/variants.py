"""The normalization variants compared by PHI-S (arXiv 2410.01680) and how each is fitted.

Every variant is an invertible affine map y' = W (y − μ) fitted from a teacher's float64 moments
(mean μ, population covariance Σ = U Λ Uᵀ); the loss-side variants keep raw targets (μ = 0, W = I) and
differ only in their loss:

| variant | W | W⁻¹ |
|---|---|---|
| mse, cosine, hyb_mse, hyb_smoothl1, ada_mse | I (μ = 0) | I |
| global_std | I / σ_g (μ_g: one scalar over all tokens and channels) | σ_g I |
| standardize | diag(1 / σ_c) | diag(σ_c) |
| pca_w | Λ^-1/2 Uᵀ | U Λ^1/2 |
| zca | U Λ^-1/2 Uᵀ | U Λ^1/2 Uᵀ |
| hca | H Λ^-1/2 Uᵀ | U Λ^1/2 Hᵀ |
| phis, ada_phis | α H Uᵀ, α = (trace Σ / C)^-1/2 | α⁻¹ U Hᵀ |

``ada_mse`` and ``ada_phis`` are the paper's AdaLoss methods (its Table 12; AM-RADIO arXiv 2312.06709,
App. E.2): the targets of ``mse`` / ``phis``, every loss term divided by a moving average of itself
(``stages.normalize.adaloss``).

**The paper's formulas exactly.** ``standardize``, ``pca_w``, ``zca`` and ``hca`` divide by σ_c / √λ_i as
the paper writes them. The only guard is numerical: a variance (eigenvalue) below
PAPER_GUARD_ULPS · C · ε₆₄ · λ_max (ε₆₄ = float64 machine epsilon, λ_max the largest eigenvalue or channel
variance; 2e-13 · λ_max at C = 1024) is raised to it. An eigendecomposition in float64 cannot resolve
eigenvalues below about C · ε₆₄ · λ_max, so the guard only touches directions that are zero to working
precision (a dead channel, a rank-deficient teacher's null space); any eigenvalue the data really has,
bf16 storage noise included (2.5e-6 relative), is far above it and is whitened to unit variance.

**This project's extension: the noise-floored variants** ``standardize_nf``, ``pca_w_nf``, ``zca_nf``,
``hca_nf`` (not in the paper). Targets are fitted from the values as stored, rounded to k mantissa bits,
and rounding adds per-channel noise of variance n_c ≈ E[y_c²]·2^-2k/24 (``storage_noise_var``); whitening
lifts a direction that holds mostly that noise to unit variance. These variants replace each λ_i (or σ_c²)
by max(λ_i, eig_floor · mean λ, f · u_iᵀ diag(n) u_i), f = NOISE_FLOOR_FACTOR: the relative floor keeps W
finite, the noise floor keeps storage noise out of the targets. f must exceed 1: statistics of stored
values already include the noise (λ_stored = λ + n_i ≥ n_i), so a floor of exactly n_i never binds; with
f, a whitened direction's noise is at most 1/f of its unit variance (measured on the demo store: storage
NMSE 1.5e-2 → 1.7e-3 on tiny_dinov2 going from f = 1 to f = 10, driven by one direction, a final
LayerNorm's null direction). Directions above the floor come out with unit variance, those below with
variance < 1: the floor changes what the student is asked to match on exactly the low-variance
directions to which the paper attributes whitening's poor results, so it is a different method, named
as one. W⁻¹ stays the exact inverse in every variant. PHI-S divides by nothing but trace Σ / C and needs
no floor. A teacher with trace Σ = 0 (constant output) cannot be normalized.

Determinism and rotation consistency: eigenvalues sorted descending; each eigenvector u_i is negated so
that u_iᵀμ ≥ 0. That rule commutes with rotations (fitting on (Qμ, QΣQᵀ) and applying to Qy gives the
same PHI-S / HCA / PCA-W targets as fitting on (μ, Σ) and applying to y, for distinct eigenvalues), which
"largest entry positive" does not. Where |u_iᵀμ| is negligible (≤ SIGN_TOL · ‖μ‖, e.g. μ = 0) the
largest-magnitude component (lowest index on ties) is made positive instead, so fitting the same
statistics twice always gives bit-identical matrices regardless of the signs LAPACK returns.

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

DEFAULT_EIG_FLOOR = 1e-6  # the noise-floored variants' relative floor (× mean eigenvalue)
NOISE_FLOOR_FACTOR = 10.0  # noise floor = this × the storage noise variance of a direction (module docstring)
PAPER_GUARD_ULPS = 1.0  # the paper-exact variants' numerical guard: this × C × ε₆₄ × λ_max
SIGN_TOL = 1e-8  # |u_iᵀμ| below this times ‖μ‖ decides no sign (the largest-entry rule does)


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
    ADA_MSE = "ada_mse"
    ADA_PHIS = "ada_phis"
    STANDARDIZE_NF = "standardize_nf"
    PCA_W_NF = "pca_w_nf"
    ZCA_NF = "zca_nf"
    HCA_NF = "hca_nf"

    @property
    def is_affine(self) -> bool:
        """True for variants that transform the targets (and train with MSE)."""
        return self.fit_as not in _LOSS_SIDE

    @property
    def loss(self) -> LossKind:
        """The loss the student trains with against this variant's targets."""
        return _LOSS_SIDE.get(self.fit_as, LossKind.MSE)

    @property
    def fit_as(self) -> "NormVariant":
        """The variant whose normalizer this one trains against (ada_mse: mse, ada_phis: phis; else itself)."""
        return _ADA_BASE.get(self, self)

    @property
    def adaptive(self) -> bool:
        """True for the AdaLoss variants (each loss term divided by its moving average)."""
        return self in _ADA_BASE

    @property
    def noise_floored(self) -> bool:
        """True for this project's noise-floored variants (not the paper's)."""
        return self in _FLOORED

    @property
    def in_paper(self) -> bool:
        """True for the PHI-S paper's twelve methods (Tables 1 and 12)."""
        return not self.noise_floored

    @property
    def floored_alternative(self) -> "NormVariant | None":
        """The noise-floored variant of a paper-exact whitening / standardization (else None)."""
        return {v: f for f, v in _FLOORED.items()}.get(self)

    @classmethod
    def parse(cls, name: "str | NormVariant") -> "NormVariant":
        """The variant called ``name``; unknown names raise ValueError listing the valid ones."""
        try:
            return cls(name)
        except ValueError:
            valid = ", ".join(v.value for v in cls)
            raise ValueError(f"unknown normalization variant {name!r}; valid: {valid}") from None


# How the summary (CLS) token is trained. Both papers compare the variants as *feature* losses and keep
# AM-RADIO's cosine on raw summaries for every variant ("cosine", the default); "variant" applies the
# variant's own normalization and loss to the summary too (what this project did before).
SUMMARY_LOSSES = ("cosine", "variant")


def parse_summary_loss(name: str) -> str:
    """``name`` if it is a valid summary loss; else ValueError listing the valid ones."""
    if name not in SUMMARY_LOSSES:
        raise ValueError(f"unknown summary loss {name!r}; valid: {', '.join(SUMMARY_LOSSES)}")
    return name


def kind_variant(norm: "NormVariant | str", kind: str, summary_loss: str) -> "NormVariant":
    """The variant whose normalizer and loss a token kind trains with: the sweep's ``norm`` for patch
    tokens; for summary tokens ``norm`` when summary_loss is "variant", else cosine on raw targets. An
    AdaLoss variant gives its base (ada_mse: mse, ada_phis: phis): the same targets and loss, the adaptive
    weighting is the training loop's (``NormVariant.adaptive``)."""
    norm = NormVariant.parse(norm)
    if kind == "summary" and parse_summary_loss(summary_loss) == "cosine":
        return NormVariant.COSINE
    return norm.fit_as


_LOSS_SIDE: dict[NormVariant, LossKind] = {
    NormVariant.MSE: LossKind.MSE,
    NormVariant.COSINE: LossKind.COSINE,
    NormVariant.HYB_MSE: LossKind.HYB_MSE,
    NormVariant.HYB_SMOOTHL1: LossKind.HYB_SMOOTHL1,
}
_ADA_BASE: dict[NormVariant, NormVariant] = {NormVariant.ADA_MSE: NormVariant.MSE,
                                             NormVariant.ADA_PHIS: NormVariant.PHIS}
# noise-floored variant -> the paper variant it floors
_FLOORED: dict[NormVariant, NormVariant] = {NormVariant.STANDARDIZE_NF: NormVariant.STANDARDIZE,
                                            NormVariant.PCA_W_NF: NormVariant.PCA_W,
                                            NormVariant.ZCA_NF: NormVariant.ZCA,
                                            NormVariant.HCA_NF: NormVariant.HCA}


@dataclass(frozen=True)
class AffineFit:
    """μ_D, W_DD, W_inv_DD (float64), the Hadamard construction used (None without one) and the variance
    floor applied to each eigen-direction (pca_w / zca / hca) or channel (standardize): the numerical
    guard for the paper-exact variants, the noise floor for the ``_nf`` ones."""

    mu_D: np.ndarray
    W_DD: np.ndarray
    W_inv_DD: np.ndarray
    construction: str | None = None
    floor_D: np.ndarray | None = None  # the variance floor applied per direction (None: no floor)


def sign_canonical(U_DD: np.ndarray, mu_D: np.ndarray | None = None) -> np.ndarray:
    """Eigenvectors (columns) negated so that u_iᵀμ ≥ 0; where |u_iᵀμ| ≤ SIGN_TOL·‖μ‖ (or without μ),
    so that u_i's largest-magnitude entry (lowest index on ties) is positive."""
    pivot_D = np.argmax(np.abs(U_DD), axis=0)
    signs_D = np.where(U_DD[pivot_D, np.arange(U_DD.shape[1])] < 0, -1.0, 1.0)
    if mu_D is not None:
        proj_D = U_DD.T @ mu_D
        decided_D = np.abs(proj_D) > SIGN_TOL * float(np.linalg.norm(mu_D))
        signs_D = np.where(decided_D, np.where(proj_D < 0, -1.0, 1.0), signs_D)
    return U_DD * signs_D


def eigh_descending(cov_DD: np.ndarray, mu_D: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and sign-canonical eigenvectors (``sign_canonical``)."""
    sym_DD = 0.5 * (cov_DD + cov_DD.T)
    lam_D, U_DD = np.linalg.eigh(sym_DD)
    lam_D, U_DD = lam_D[::-1], U_DD[:, ::-1]
    return np.clip(lam_D, 0.0, None).copy(), sign_canonical(np.ascontiguousarray(U_DD), mu_D)


def storage_noise_var(moments: Moments, keepbits: int | None) -> np.ndarray:
    """Per-channel variance of the rounding noise of storing values with ``keepbits`` mantissa bits.

    Round-to-nearest to k kept bits has relative MSE ≈ 2^-2k / 24 (2.5e-6 at k = 7, bf16), so a channel
    with second moment E[y_c²] = σ_c² + μ_c² carries noise of variance E[y_c²]·2^-2k/24. Lossless storage
    (keepbits None) has none: zeros.
    """
    if keepbits is None:
        return np.zeros(moments.dim)
    second_D = np.clip(np.diag(moments.covariance()), 0.0, None) + moments.mean_D ** 2
    return second_D * (2.0 ** (-2 * int(keepbits)) / 24.0)


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


def paper_guard(largest: float, dim: int) -> float:
    """The paper-exact variants' numerical guard: PAPER_GUARD_ULPS · C · ε₆₄ · λ_max (module docstring)."""
    return PAPER_GUARD_ULPS * dim * float(np.finfo(np.float64).eps) * max(float(largest), 0.0)


def _fit_standardize(m: Moments, cov_DD: np.ndarray, variant: NormVariant, eig_floor: float,
                     noise_D: np.ndarray) -> AffineFit:
    var_D = np.clip(np.diag(cov_DD), 0.0, None)
    mean_lam = _mean_eigenvalue(cov_DD)
    if variant.noise_floored:
        floor_D = np.maximum(eig_floor * mean_lam, noise_D)
    else:
        floor_D = np.full(m.dim, paper_guard(var_D.max(), m.dim))
    sigma_D = np.sqrt(np.maximum(var_D, floor_D))
    return AffineFit(m.mean_D.copy(), np.diag(1.0 / sigma_D), np.diag(sigma_D), floor_D=floor_D)


def _fit_spectral(variant: NormVariant, m: Moments, cov_DD: np.ndarray, eig_floor: float,
                  hadamard_cache: Path | None, noise_D: np.ndarray) -> AffineFit:
    mean_lam = _mean_eigenvalue(cov_DD)
    lam_D, U_DD = eigh_descending(cov_DD, m.mean_D)
    base = _FLOORED.get(variant, variant)
    if variant.noise_floored:
        # storage noise along each eigen-direction: u_iᵀ diag(n) u_i (rounding noise is independent per value)
        floor_D = np.maximum(eig_floor * mean_lam, (U_DD ** 2).T @ noise_D)
    else:
        floor_D = np.full(m.dim, paper_guard(lam_D[0], m.dim))
    root_D = np.sqrt(np.maximum(lam_D, floor_D))
    construction = None
    if base in (NormVariant.HCA, NormVariant.PHIS):
        H_DD, construction = hadamard_matrix(m.dim, cache_dir=hadamard_cache)
    if base is NormVariant.PCA_W:
        W, W_inv = U_DD.T / root_D[:, None], U_DD * root_D
    elif base is NormVariant.ZCA:
        W, W_inv = (U_DD / root_D) @ U_DD.T, (U_DD * root_D) @ U_DD.T
    elif base is NormVariant.HCA:
        W, W_inv = H_DD @ (U_DD.T / root_D[:, None]), (U_DD * root_D) @ H_DD.T
    else:  # PHIS: no division by eigenvalues, no floor
        alpha = mean_lam ** -0.5
        W, W_inv = alpha * (H_DD @ U_DD.T), (U_DD @ H_DD.T) / alpha
        return AffineFit(m.mean_D.copy(), W, W_inv, construction)
    return AffineFit(m.mean_D.copy(), W, W_inv, construction, floor_D=floor_D)


def fit_affine(
    variant: NormVariant | str,
    moments: Moments,
    *,
    hadamard_cache: Path | None = None,
    eig_floor: float = DEFAULT_EIG_FLOOR,
    noise_D: np.ndarray | None = None,
) -> AffineFit:
    """Fit (μ, W, W⁻¹) of ``variant`` from float64 moments (population covariance).

    ``eig_floor`` is relative to the mean eigenvalue and ``noise_D`` the per-channel storage noise
    variance (``storage_noise_var``; None: no noise floor); both act in the noise-floored variants only
    (the paper-exact ones have only the numerical guard); see the module docstring. An AdaLoss variant
    is fitted as its base (``NormVariant.fit_as``). ``hadamard_cache``
    is the directory of cached Hadamard matrices (hca, phis). Raises ValueError for empty statistics, a
    constant teacher, or a width without a Hadamard matrix (hca, phis).
    """
    variant = NormVariant.parse(variant).fit_as
    if not 0.0 < eig_floor < 1.0:
        raise ValueError(f"eig_floor is relative to the mean eigenvalue and must be in (0, 1), got {eig_floor}")
    noise_D = np.zeros(moments.dim) if noise_D is None else np.asarray(noise_D, np.float64)
    if noise_D.shape != (moments.dim,) or not np.all(np.isfinite(noise_D)) or np.any(noise_D < 0):
        raise ValueError(f"noise_D must be {moments.dim} finite variances >= 0, got shape {noise_D.shape}")
    if not variant.is_affine:
        eye_DD = np.eye(moments.dim)
        return AffineFit(np.zeros(moments.dim), eye_DD, eye_DD.copy())
    if moments.count < 1:
        raise ValueError(f"cannot fit {variant.value} from empty statistics (count {moments.count})")
    cov_DD = moments.covariance()
    if variant is NormVariant.GLOBAL_STD:
        return _fit_global_std(moments, cov_DD)
    if variant in (NormVariant.STANDARDIZE, NormVariant.STANDARDIZE_NF):
        return _fit_standardize(moments, cov_DD, variant, eig_floor, noise_D)
    return _fit_spectral(variant, moments, cov_DD, eig_floor, hadamard_cache, noise_D)
