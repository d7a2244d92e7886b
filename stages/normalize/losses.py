"""Per-teacher target losses of AM-RADIO (arXiv 2312.06709) and the PHI-S comparison (arXiv 2410.01680).

- ``mse``: mean over channels of (pred − target)², averaged over tokens (the loss every affine
  normalization variant trains with).
- ``cosine``: 1 − cos(pred, target) over the channel dimension (AM-RADIO's summary loss).
- ``hyb_mse``: 0.9 · (1 − cos) + 0.1 · MSE.
- ``hyb_smoothl1``: 0.9 · (1 − cos) + 0.1 · smooth-L1 (AM-RADIO's feature loss). The paper does not
  state smooth-L1's β; the default 2.0 is the value of the public re-implementation.

Every loss is a mean over valid tokens; with a mask that selects no token it is an exact zero that is
still connected to the graph (an all-invalid batch contributes nothing).

Shape legend: N tokens (any leading dimensions are flattened into N), D channels.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F

COSINE_WEIGHT = 0.9
DISTANCE_WEIGHT = 0.1
SMOOTH_L1_BETA = 2.0
COSINE_EPS = 1e-8


class LossKind(str, Enum):
    """Target loss of one teacher head; ``.value`` is the config / CLI name."""

    MSE = "mse"
    COSINE = "cosine"
    HYB_MSE = "hyb_mse"
    HYB_SMOOTHL1 = "hyb_smoothl1"

    @classmethod
    def parse(cls, name: "str | LossKind") -> "LossKind":
        """The loss called ``name``; unknown names raise ValueError listing the valid ones."""
        try:
            return cls(name)
        except ValueError:
            valid = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown loss {name!r}; valid: {valid}") from None


def _per_token(kind: LossKind, pred_ND: torch.Tensor, target_ND: torch.Tensor, beta: float) -> torch.Tensor:
    """Loss of each token, shape [N]."""
    if kind is LossKind.MSE:
        return (pred_ND - target_ND).square().mean(dim=-1)
    cos_dist_N = 1.0 - F.cosine_similarity(pred_ND, target_ND, dim=-1, eps=COSINE_EPS)
    if kind is LossKind.COSINE:
        return cos_dist_N
    if kind is LossKind.HYB_MSE:
        dist_N = (pred_ND - target_ND).square().mean(dim=-1)
    else:
        dist_N = F.smooth_l1_loss(pred_ND, target_ND, reduction="none", beta=beta).mean(dim=-1)
    return COSINE_WEIGHT * cos_dist_N + DISTANCE_WEIGHT * dist_N


def target_loss(
    kind: LossKind | str,
    pred_ND: torch.Tensor,
    target_ND: torch.Tensor,
    *,
    mask_N: torch.Tensor | None = None,
    beta: float = SMOOTH_L1_BETA,
) -> torch.Tensor:
    """Scalar loss: the mean over (valid) tokens of the per-token loss of ``kind``.

    ``pred_ND`` and ``target_ND`` have the same shape [..., D]; ``mask_N`` (bool, shape of the leading
    dimensions) selects the valid tokens. ``beta`` is smooth-L1's β (``hyb_smoothl1`` only).
    """
    kind = LossKind.parse(kind)
    if pred_ND.shape != target_ND.shape:
        raise ValueError(f"prediction shape {tuple(pred_ND.shape)} != target shape {tuple(target_ND.shape)}")
    if pred_ND.ndim < 1:
        raise ValueError("target_loss needs tensors with a channel dimension")
    if beta <= 0:
        raise ValueError(f"smooth-L1 beta must be positive, got {beta}")
    dim = pred_ND.shape[-1]
    pred_ND = pred_ND.reshape(-1, dim)
    target_ND = target_ND.to(pred_ND.dtype).reshape(-1, dim)
    if mask_N is not None:
        mask_N = mask_N.reshape(-1).to(device=pred_ND.device, dtype=torch.bool)
        if mask_N.shape[0] != pred_ND.shape[0]:
            raise ValueError(f"mask selects among {mask_N.shape[0]} tokens but there are {pred_ND.shape[0]}")
        # select before computing, so invalid (possibly non-finite) targets never enter the graph
        pred_ND, target_ND = pred_ND[mask_N], target_ND[mask_N]
    if pred_ND.shape[0] == 0:
        return pred_ND.sum() * 0.0
    return _per_token(kind, pred_ND, target_ND, beta).mean()
