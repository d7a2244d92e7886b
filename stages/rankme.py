"""RankMe (Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the downstream performance of pretrained
self-supervised representations by their rank", ICML 2023), the rank measure of the PHI-S paper's Table 6
(arXiv 2410.01680), computed exactly from a store's float64 moments.

RankMe(Z) = exp(−Σ_i p_i log p_i), p_i = σ_i / Σ_j σ_j, with σ_i the singular values of the N × C feature
matrix Z (one row per token). Garrido et al. add ε = 1e-7 to p_i to keep log finite; here zero singular
values are left out of the sum instead (0 · log 0 = 0), so k equal non-zero singular values give exactly k.

From the moments: ZᵀZ = N · S with S the *uncentred* second moment S = Σ + μμᵀ (Σ the population
covariance, μ the mean), and the singular values of Z are the square roots of the eigenvalues of ZᵀZ, so
σ_i = √(N λ_i(S)) exactly, and p_i = √λ_i / Σ_j √λ_j (N cancels). ``rankme_from_moments`` uses S, i.e. Z as
stored, which is Garrido et al.'s definition (no centring). With ``centred=True`` it uses Σ alone: the
RankMe of the centred matrix Z − 1μᵀ, equally exact. Both need nothing but the merged moments: no feature
is read.

``eigen_entropy_rank`` is a different quantity that this project used to print as "effective rank":
exp(entropy of the normalized covariance *eigenvalues* λ_i / Σ_j λ_j) (Roy & Vetterli 2007). Eigenvalues
are the squared singular values, so it weights the leading directions far more and is much smaller than
RankMe on a decaying spectrum (issue 21: 19.7 against RankMe 672 at C = 1536 on the same data).

Shape legend: N tokens, C channels.
"""

from __future__ import annotations

import numpy as np

from stages.stats import Moments


def _exp_entropy(weights_C: np.ndarray) -> float:
    """exp(−Σ p log p) of p = w / Σ w over the positive weights; 0.0 when there is no positive weight."""
    w_C = np.asarray(weights_C, np.float64)
    w_C = w_C[w_C > 0]
    if w_C.size == 0:
        return 0.0
    p_C = w_C / w_C.sum()
    return float(np.exp(-(p_C * np.log(p_C)).sum()))


def rankme(x_NC: np.ndarray) -> float:
    """RankMe of a feature matrix (one row per token), from its singular values."""
    x_NC = np.asarray(x_NC, np.float64)
    if x_NC.ndim != 2:
        raise ValueError(f"RankMe needs an N x C feature matrix, got shape {x_NC.shape}")
    return _exp_entropy(np.linalg.svd(x_NC, compute_uv=False))


def rankme_from_eigenvalues(lam_C: np.ndarray) -> float:
    """RankMe from the eigenvalues of ZᵀZ / N (σ_i ∝ √λ_i). Eigenvalues at or below C · ε₆₄ · λ_max are zero
    to float64 precision (an eigensolver's round-off) and count as 0: the square root would otherwise lift
    round-off of 1e-16 · λ_max to singular values of 1e-8 · σ_max."""
    lam_C = np.asarray(lam_C, np.float64)
    if lam_C.size == 0:
        return 0.0
    resolution = lam_C.size * float(np.finfo(np.float64).eps) * max(float(lam_C.max()), 0.0)
    return _exp_entropy(np.sqrt(np.where(lam_C > resolution, lam_C, 0.0)))


def rankme_from_moments(m: Moments, *, centred: bool = False) -> float:
    """RankMe of the N × C matrix the moments were accumulated from (uncentred, Garrido et al.'s definition),
    or of its centred version (``centred=True``); exact, see the module docstring. NaN without tokens."""
    if m.count == 0:
        return float("nan")
    second_CC = m.covariance() if centred else m.covariance() + np.outer(m.mean_D, m.mean_D)
    return rankme_from_eigenvalues(np.linalg.eigvalsh(0.5 * (second_CC + second_CC.T)))


def eigen_entropy_rank(lam_C: np.ndarray) -> float:
    """exp(entropy of the normalized covariance eigenvalues) (Roy & Vetterli 2007): not RankMe."""
    return _exp_entropy(np.clip(np.asarray(lam_C, np.float64), 0.0, None))
