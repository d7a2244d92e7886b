"""Denormalization folded into a head's last Linear (PHI-S, arXiv 2410.01680).

Shape legend: N tokens, I head input features, D teacher channels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stages.normalize.fold import fold_denormalization
from stages.normalize.normalizer import fit_normalizer
from stages.normalize.variants import NormVariant
from stages.stats import Moments


def _teacher_moments(d: int) -> Moments:
    rng = np.random.default_rng(0)
    mix_DD = np.eye(d) + 0.5 * rng.standard_normal((d, d)) / np.sqrt(d)
    y_ND = rng.standard_normal((1000, d)) * np.geomspace(4.0, 0.02, d) @ mix_DD + rng.normal(0, 5, d)
    return Moments.from_batch(y_ND)


@pytest.mark.parametrize("variant", list(NormVariant))
@pytest.mark.parametrize("bias", [True, False])
def test_folded_head_outputs_teacher_space(variant: NormVariant, bias: bool) -> None:
    torch.manual_seed(0)
    norm = fit_normalizer(variant, _teacher_moments(64))
    head = nn.Linear(32, 64, bias=bias)
    before = head.weight.detach().clone()
    folded = fold_denormalization(head, norm)
    assert folded.weight.dtype == torch.float32 and folded.bias is not None
    torch.testing.assert_close(head.weight, before, rtol=0, atol=0)  # the input layer is untouched
    x_NI = torch.randn(50, 32)
    with torch.no_grad():
        want_ND = norm.invert(head(x_NI).double())
        got_ND = folded(x_NI).double()
    rel = (got_ND - want_ND).norm() / want_ND.norm()
    assert rel <= 1e-5, f"relative error {rel:.2e}"
    assert (got_ND - want_ND).abs().max() <= 1e-5 * want_ND.abs().max()


def test_fold_float64_is_exact() -> None:
    norm = fit_normalizer("zca", _teacher_moments(48))
    head = nn.Linear(16, 48, dtype=torch.float64)
    x_NI = torch.randn(20, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fold_denormalization(head, norm)(x_NI), norm.invert(head(x_NI)),
                                   rtol=1e-12, atol=1e-12)


def test_fold_width_mismatch() -> None:
    norm = fit_normalizer("phis", _teacher_moments(64))
    with pytest.raises(ValueError, match="width 64.*63 outputs"):
        fold_denormalization(nn.Linear(8, 63), norm)
