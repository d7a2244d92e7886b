"""Teacher-space error metrics on hand-built cases with known answers."""

import numpy as np
import pytest
import torch

from stages.evaluate.metrics import (
    ErrorAccumulator,
    channel_error_variance,
    error_variance_range,
    mse,
    token_cosine,
)


def test_constant_offset_gives_offset_squared_mse():
    target_BND = np.random.default_rng(0).normal(size=(2, 5, 4))
    assert mse(target_BND + 0.5, target_BND) == pytest.approx(0.25)
    assert mse(torch.tensor(target_BND - 2.0), torch.tensor(target_BND)) == pytest.approx(4.0)


def test_cosine_orthogonal_parallel_and_opposite():
    target_ND = np.array([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    pred_ND = np.array([[0.0, 2.0], [0.0, 1.0], [-2.0, -2.0]])
    np.testing.assert_allclose(token_cosine(pred_ND, target_ND), [0.0, 1.0, -1.0], atol=1e-12)


def test_per_channel_error_variance_and_range():
    # error in channel 0 alternates ±1 (variance 1), channel 1 alternates ±3 (variance 9), channel 2 constant
    sign_N = np.array([1.0, -1.0, 1.0, -1.0])
    err_ND = np.stack([sign_N, 3 * sign_N, np.full(4, 7.0)], axis=1)
    target_ND = np.random.default_rng(1).normal(size=(4, 3))
    np.testing.assert_allclose(channel_error_variance(target_ND + err_ND, target_ND), [1.0, 9.0, 0.0], atol=1e-12)
    assert error_variance_range(target_ND + err_ND, target_ND) == pytest.approx(9.0)


def test_accumulator_matches_whole_batch_regardless_of_split():
    rng = np.random.default_rng(2)
    target_ND = rng.normal(size=(30, 6)) * np.arange(1, 7)
    pred_ND = target_ND + rng.normal(size=(30, 6)) * np.linspace(0.1, 2.0, 6)
    acc = ErrorAccumulator()
    for lo, hi in [(0, 7), (7, 8), (8, 30)]:
        acc.add(pred_ND[lo:hi], target_ND[lo:hi], pred_norm=pred_ND[lo:hi] * 2, target_norm=target_ND[lo:hi] * 2)
    res = acc.result()
    assert res["mse"] == pytest.approx(mse(pred_ND, target_ND))
    cos_N = token_cosine(pred_ND, target_ND)
    assert res["cos_mean"] == pytest.approx(cos_N.mean())
    assert res["cos_min"] == pytest.approx(cos_N.min())
    assert res["err_var_range"] == pytest.approx(error_variance_range(pred_ND, target_ND))
    assert res["norm_err_var_range"] == pytest.approx(4 * error_variance_range(pred_ND, target_ND))
    assert res["num_tokens"] == 30


def test_shape_mismatch_and_empty_are_clear_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        mse(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="no tokens"):
        ErrorAccumulator().result()
    with pytest.raises(ValueError, match="both"):
        ErrorAccumulator().add(np.zeros((1, 2)), np.zeros((1, 2)), pred_norm=np.zeros((1, 2)))
