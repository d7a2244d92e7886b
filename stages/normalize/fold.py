"""Fold a normalizer's inverse into a head's last Linear layer (PHI-S, arXiv 2410.01680).

The student is trained to predict normalized targets y' = (y − μ) Wᵀ; for export and teacher-space
evaluation the inverse y = y' W⁻ᵀ + μ is folded into the Linear that produced y':
    y' = x Aᵀ + b   ⇒   y = x (Θ A)ᵀ + (Θ b + μ),   Θ = W⁻¹,
computed in float64 and cast back to the layer's dtype and device.

Shape legend: D teacher channels (out features), I in features.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stages.normalize.normalizer import Normalizer


@torch.no_grad()
def fold_denormalization(linear: nn.Linear, normalizer: Normalizer) -> nn.Linear:
    """A new Linear whose outputs are ``normalizer.invert(linear(x))`` (teacher space).

    The input layer is left untouched. Raises ValueError if its out_features is not the normalizer's width.
    """
    if linear.out_features != normalizer.dim:
        raise ValueError(f"cannot fold a normalizer of width {normalizer.dim} into a Linear with "
                         f"{linear.out_features} outputs")
    weight = linear.weight
    theta_DD = torch.from_numpy(normalizer.W_inv_DD)
    A_DI = weight.detach().to(device="cpu", dtype=torch.float64)
    b_D = (torch.zeros(normalizer.dim, dtype=torch.float64) if linear.bias is None
           else linear.bias.detach().to(device="cpu", dtype=torch.float64))
    folded = nn.Linear(linear.in_features, linear.out_features, bias=True,
                       device=weight.device, dtype=weight.dtype)
    folded.weight.copy_((theta_DD @ A_DI).to(device=weight.device, dtype=weight.dtype))
    bias_D = theta_DD @ b_D + torch.from_numpy(np.ascontiguousarray(normalizer.mu_D))
    folded.bias.copy_(bias_D.to(device=weight.device, dtype=weight.dtype))
    return folded
