"""Target losses of AM-RADIO (arXiv 2312.06709) and the PHI-S comparison, on hand-built cases."""

from __future__ import annotations

import math

import pytest
import torch

from stages.normalize.losses import LossKind, target_loss

PRED = torch.tensor([[2.0, 3.0], [1.0, 0.0]], dtype=torch.float64)
TARGET = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
# token 0: diff (1, 3), cos = 2/√13; token 1: diff (2, 0), cos = −1
COS_DIST = [1 - 2 / math.sqrt(13), 2.0]
MSE = [(1 + 9) / 2, (4 + 0) / 2]
SMOOTH_B2 = [(0.25 + 2.0) / 2, (1.0 + 0.0) / 2]  # β=2: 0.5·d²/β if |d|<β else |d| − β/2
SMOOTH_B1 = [(0.5 + 2.5) / 2, (1.5 + 0.0) / 2]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("kind, expected", [
    (LossKind.MSE, _mean(MSE)),
    (LossKind.COSINE, _mean(COS_DIST)),
    (LossKind.HYB_MSE, _mean([0.9 * c + 0.1 * m for c, m in zip(COS_DIST, MSE)])),
    (LossKind.HYB_SMOOTHL1, _mean([0.9 * c + 0.1 * s for c, s in zip(COS_DIST, SMOOTH_B2)])),
])
def test_known_values(kind: LossKind, expected: float) -> None:
    loss = target_loss(kind, PRED, TARGET)
    assert loss.shape == () and loss.item() == pytest.approx(expected, rel=1e-12)


def test_smooth_l1_beta_keyword() -> None:
    got = target_loss("hyb_smoothl1", PRED, TARGET, beta=1.0).item()
    assert got == pytest.approx(_mean([0.9 * c + 0.1 * s for c, s in zip(COS_DIST, SMOOTH_B1)]), rel=1e-12)


def test_identical_and_scaled_predictions() -> None:
    t = torch.randn(10, 8, dtype=torch.float64)
    assert target_loss("mse", t, t).item() == 0.0
    assert target_loss("cosine", 3.0 * t, t).item() == pytest.approx(0.0, abs=1e-12)
    assert target_loss("mse", 3.0 * t, t).item() > 0


def test_mask_means_over_valid_tokens_only() -> None:
    target = torch.cat([TARGET, torch.full((1, 2), float("nan"))])
    pred = torch.cat([PRED, torch.zeros(1, 2)]).requires_grad_(True)
    mask = torch.tensor([True, False, False])
    loss = target_loss("hyb_smoothl1", pred, target, mask_N=mask)
    assert loss.item() == pytest.approx(0.9 * COS_DIST[0] + 0.1 * SMOOTH_B2[0], rel=1e-12)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[1:].abs().sum() == 0


def test_all_masked_is_zero_with_gradient() -> None:
    pred = PRED.clone().requires_grad_(True)
    loss = target_loss("mse", pred, TARGET, mask_N=torch.zeros(2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad.abs().sum() == 0


def test_leading_dims_flatten_into_tokens() -> None:
    pred_BND, target_BND = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask_BN = torch.rand(2, 5) > 0.3
    mask_BN[0, 0] = True
    for kind in LossKind:
        flat = target_loss(kind, pred_BND.reshape(10, 4)[mask_BN.reshape(10)],
                           target_BND.reshape(10, 4)[mask_BN.reshape(10)])
        torch.testing.assert_close(target_loss(kind, pred_BND, target_BND, mask_N=mask_BN), flat)


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown loss 'l2'.*hyb_smoothl1"):
        target_loss("l2", PRED, TARGET)
    with pytest.raises(ValueError, match="shape"):
        target_loss("mse", PRED, TARGET[:, :1])
    with pytest.raises(ValueError, match="mask"):
        target_loss("mse", PRED, TARGET, mask_N=torch.ones(3, dtype=torch.bool))
