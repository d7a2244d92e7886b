"""RankMe (Garrido et al., ICML 2023; PHI-S arXiv 2410.01680 Table 6): known answers, and the moments
route equal to the SVD of the feature matrix (uncentred and centred)."""

from __future__ import annotations

import numpy as np
import pytest

from stages.rankme import eigen_entropy_rank, rankme, rankme_from_eigenvalues, rankme_from_moments
from stages.stats import Moments


@pytest.mark.parametrize("k", [1, 3, 17, 64])
def test_k_equal_singular_values_give_k(k: int) -> None:
    rng = np.random.default_rng(k)
    U_NK = np.linalg.qr(rng.normal(size=(200, k)))[0]
    V_CK = np.linalg.qr(rng.normal(size=(96, k)))[0]
    x_NC = 3.0 * U_NK @ V_CK.T  # rank k, every non-zero singular value 3
    assert rankme(x_NC) == pytest.approx(k, rel=1e-9)
    m = Moments.from_batch(x_NC)
    assert rankme_from_moments(m) == pytest.approx(k, rel=1e-6)  # uncentred: exactly Z's singular values
    assert rankme_from_eigenvalues(np.r_[np.full(k, 2.5), np.zeros(10)]) == pytest.approx(k, rel=1e-12)


def test_moments_route_equals_the_svd_of_the_matrix() -> None:
    rng = np.random.default_rng(0)
    x_NC = rng.normal(size=(500, 32)) * np.geomspace(5, 0.01, 32) + rng.normal(0, 2, 32)
    m = Moments.from_batch(x_NC[:200]).merge(Moments.from_batch(x_NC[200:]))  # merged shards, as stores do
    assert rankme_from_moments(m) == pytest.approx(rankme(x_NC), rel=1e-9)
    assert rankme_from_moments(m, centred=True) == pytest.approx(rankme(x_NC - x_NC.mean(0)), rel=1e-9)
    assert np.isnan(rankme_from_moments(Moments.empty(4)))


def test_eigen_entropy_rank_is_not_rankme() -> None:
    lam_C = np.geomspace(1.0, 1e-4, 100)  # a decaying spectrum: squaring (eigenvalues) concentrates mass
    assert eigen_entropy_rank(lam_C) < 0.6 * rankme_from_eigenvalues(lam_C)
    assert eigen_entropy_rank(np.ones(7)) == pytest.approx(7.0) == rankme_from_eigenvalues(np.ones(7))
