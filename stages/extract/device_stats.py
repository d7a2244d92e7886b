"""Float64 moments accumulated on the teacher's device, batch by batch, inside stage one's forward loop.

PHI-S (arXiv 2410.01680) fits normalizers from the mean and covariance of each teacher's outputs as
stored. Accumulating them where the teacher runs avoids a second pass over the shard on the host and a
float64 host copy of it: each batch's moments are a float64 two-pass on the device, merged into the
running partial with the exact rule of Chan et al. (1979) that `stages.stats.Moments.merge` uses (same
formula, same order), so the partial equals a float64 two-pass over the stored values to ~1e-15 relative.

Shape legend: N tokens, C channels.
"""

from __future__ import annotations

import numpy as np
import torch

from stages.stats import Moments


class DeviceMoments:
    """Count, mean and co-moment matrix of a growing set of vectors, kept in float64 on one device."""

    def __init__(self, dim: int, device: torch.device) -> None:
        self.dim = int(dim)
        self.device = torch.device(device)
        self.count = 0
        self.mean_C = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        self.m2_CC = torch.zeros((self.dim, self.dim), dtype=torch.float64, device=self.device)

    def update(self, x_NC: torch.Tensor) -> None:
        """Add a batch of vectors (any float dtype, on this device); float64 two-pass then a Chan merge."""
        if x_NC.ndim != 2 or x_NC.shape[1] != self.dim:
            raise ValueError(f"expected a [N, {self.dim}] batch, got {tuple(x_NC.shape)}")
        n = int(x_NC.shape[0])
        if n == 0:
            return
        x_NC = x_NC.to(torch.float64)
        mean_C = x_NC.mean(dim=0)
        dev_NC = x_NC - mean_C
        m2_CC = dev_NC.T @ dev_NC
        if self.count == 0:  # Moments.merge returns the other partial unchanged: do the same
            self.count, self.mean_C, self.m2_CC = n, mean_C, m2_CC
            return
        total = self.count + n
        delta_C = mean_C - self.mean_C
        self.mean_C = self.mean_C + delta_C * (n / total)
        self.m2_CC = self.m2_CC + m2_CC + torch.outer(delta_C, delta_C) * (self.count * n / total)
        self.count = total

    def to_moments(self) -> Moments:
        """The partial as host float64 `Moments`."""
        if self.count == 0:
            return Moments.empty(self.dim)
        return Moments(self.count, self.mean_C.cpu().numpy().astype(np.float64, copy=False),
                       self.m2_CC.cpu().numpy().astype(np.float64, copy=False))

    @staticmethod
    def flops(n: int, dim: int) -> float:
        """Floating-point operations of one `update` of n vectors (dominated by the 2·n·C² Gram product)."""
        return 2.0 * n * dim * dim + 4.0 * n * dim + 3.0 * dim * dim
