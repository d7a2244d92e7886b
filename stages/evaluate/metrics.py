"""Teacher-matching errors, measured as the PHI-S paper reports them (arXiv 2410.01680).

The student predicts each teacher's *normalized* targets y' = W(y − μ); errors are reported after the
inverse map, in the teacher's own space (y = y' W⁻ᵀ + μ), so that variants with different W are
comparable. Per teacher and token kind (summary / patches) we report:

- ``mse``: mean over tokens and channels of (ŷ − y)² in teacher space;
- ``cos_mean`` / ``cos_min``: mean and minimum cosine similarity between predicted and target tokens;
- ``err_var_range``: max − min over channels of the variance of the error ŷ_c − y_c, in teacher space
  and (``norm_err_var_range``) in the normalized space the loss saw (the PHI-S paper's Table 5 measure:
  whitening spreads the error unevenly across channels, PHI-S spreads it evenly).

All functions are pure; ``ErrorAccumulator`` folds batches in float64 so results do not depend on
batch size.

Shape legend: N tokens, D channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

_EPS = 1e-12


def _as_2d_f64(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 1:
        raise ValueError(f"{name} must have a channel axis, got a scalar")
    return x.reshape(-1, x.shape[-1])


def _check_pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred_ND, target_ND = _as_2d_f64(pred, "pred"), _as_2d_f64(target, "target")
    if pred_ND.shape != target_ND.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return pred_ND, target_ND


def mse(pred: ArrayLike, target: ArrayLike) -> float:
    """Mean squared error over every token and channel (any leading shape, last axis channels)."""
    pred_ND, target_ND = _check_pair(pred, target)
    return float(np.mean((pred_ND - target_ND) ** 2))


def token_cosine(pred: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Cosine similarity per token, shape [N] (leading axes flattened). Zero vectors give cosine 0."""
    pred_ND, target_ND = _check_pair(pred, target)
    dot_N = np.einsum("nd,nd->n", pred_ND, target_ND)
    norm_N = np.linalg.norm(pred_ND, axis=1) * np.linalg.norm(target_ND, axis=1)
    return dot_N / np.maximum(norm_N, _EPS)


def channel_error_variance(pred: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Population variance of the error ŷ − y per channel, shape [D]."""
    pred_ND, target_ND = _check_pair(pred, target)
    return np.var(pred_ND - target_ND, axis=0)


def error_variance_range(pred: ArrayLike, target: ArrayLike) -> float:
    """max − min over channels of the per-channel error variance (PHI-S paper, Table 5)."""
    var_D = channel_error_variance(pred, target)
    return float(var_D.max() - var_D.min())


@dataclass
class _ChannelErrorMoments:
    """Float64 per-channel sums of the error and of its square: mergeable across batches."""

    count: int = 0
    sum_D: np.ndarray | None = None
    sumsq_D: np.ndarray | None = None

    def add(self, err_ND: np.ndarray) -> None:
        if self.sum_D is None:
            self.sum_D = np.zeros(err_ND.shape[1])
            self.sumsq_D = np.zeros(err_ND.shape[1])
        if err_ND.shape[1] != self.sum_D.shape[0]:
            raise ValueError(f"channel count changed between batches: {self.sum_D.shape[0]} → {err_ND.shape[1]}")
        self.count += err_ND.shape[0]
        self.sum_D += err_ND.sum(axis=0)
        self.sumsq_D += (err_ND**2).sum(axis=0)

    def variance_D(self) -> np.ndarray:
        mean_D = self.sum_D / self.count
        return np.maximum(self.sumsq_D / self.count - mean_D**2, 0.0)


@dataclass
class ErrorAccumulator:
    """Accumulates one teacher's errors for one token kind over batches.

    ``add`` takes teacher-space prediction and target, and optionally the normalized-space pair the loss
    saw (for ``norm_err_var_range``). ``result`` returns a flat dict of floats.
    """

    teacher_space: _ChannelErrorMoments = field(default_factory=_ChannelErrorMoments)
    norm_space: _ChannelErrorMoments = field(default_factory=_ChannelErrorMoments)
    sq_err_sum: float = 0.0
    num_values: int = 0
    cos_sum: float = 0.0
    cos_min: float = float("inf")
    num_tokens: int = 0

    def add(self, pred: ArrayLike, target: ArrayLike, *, pred_norm: ArrayLike | None = None,
            target_norm: ArrayLike | None = None) -> None:
        """Fold one batch (any leading shape, last axis channels)."""
        pred_ND, target_ND = _check_pair(pred, target)
        err_ND = pred_ND - target_ND
        self.sq_err_sum += float((err_ND**2).sum())
        self.num_values += err_ND.size
        cos_N = token_cosine(pred_ND, target_ND)
        self.cos_sum += float(cos_N.sum())
        self.cos_min = min(self.cos_min, float(cos_N.min(initial=np.inf)))
        self.num_tokens += cos_N.shape[0]
        self.teacher_space.add(err_ND)
        if (pred_norm is None) != (target_norm is None):
            raise ValueError("pass both pred_norm and target_norm, or neither")
        if pred_norm is not None:
            pn_ND, tn_ND = _check_pair(pred_norm, target_norm)
            self.norm_space.add(pn_ND - tn_ND)

    def result(self) -> dict[str, float]:
        """{"mse", "cos_mean", "cos_min", "err_var_range", "norm_err_var_range"?, "num_tokens"}."""
        if self.num_tokens == 0:
            raise ValueError("no tokens were accumulated")
        var_D = self.teacher_space.variance_D()
        out = {
            "mse": self.sq_err_sum / self.num_values,
            "cos_mean": self.cos_sum / self.num_tokens,
            "cos_min": self.cos_min,
            "err_var_range": float(var_D.max() - var_D.min()),
            "num_tokens": self.num_tokens,
        }
        if self.norm_space.count:
            nvar_D = self.norm_space.variance_D()
            out["norm_err_var_range"] = float(nvar_D.max() - nvar_D.min())
        return out
