"""Storage fidelity in the space the loss uses (PHI-S, arXiv 2410.01680; bit rounding: Klöwer et al. 2021).

Stored targets are rounded (k mantissa bits; bf16 at k = 7). Whether that is harmless depends on the
normalization: an affine map T(y) = W(y − μ) that whitens lifts directions holding little signal, and the
rounding noise in them, to unit variance, while PHI-S scales every direction alike. So fidelity is
measured per variant, after T:

    NMSE_T(a) = Σ ‖T(a) − T(y)‖² / Σ ‖T(y) − mean T(y)‖²     (over tokens)

for a = the stored (rounded) values ŷ ("storage") and for a = the teacher's output under bf16 autocast
("the teacher's own bf16 noise": how much the teacher itself moves when served in bf16, as teachers are).
The gate: storage NMSE_T at most GATE_RATIO (a tenth) of the teacher's bf16 NMSE_T, and minimum token
cosine between T(ŷ) and T(y) at least MIN_COSINE. A variant that fails is one whose targets are partly
storage noise. ``storage_nmse_model`` is the noise-model prediction of the storage NMSE from statistics
alone (rounding noise independent per value, variance E[y_c²]·2^-2k/24).

Shape legend: N tokens, D channels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from stages.normalize.normalizer import Normalizer
from stages.normalize.variants import storage_noise_var
from stages.stats import Moments

GATE_RATIO = 0.1
MIN_COSINE = 0.999


def nmse_in(normalizer: Normalizer, approx_ND: np.ndarray, exact_ND: np.ndarray) -> float:
    """NMSE_T of ``approx`` against ``exact`` after the normalizer's map (float64)."""
    t_exact = normalizer.apply(np.asarray(exact_ND, np.float64))
    t_approx = normalizer.apply(np.asarray(approx_ND, np.float64))
    signal = float(np.square(t_exact - t_exact.mean(axis=0)).sum())
    if signal <= 0.0:
        raise ValueError("the exact values have no variance after the normalizer: NMSE is undefined")
    return float(np.square(t_approx - t_exact).sum()) / signal


def min_cosine_in(normalizer: Normalizer, approx_ND: np.ndarray, exact_ND: np.ndarray) -> float:
    """Smallest per-token cosine between T(approx) and T(exact)."""
    a = normalizer.apply(np.asarray(approx_ND, np.float64))
    b = normalizer.apply(np.asarray(exact_ND, np.float64))
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(num / np.maximum(den, 1e-300)))


def storage_nmse_model(normalizer: Normalizer, moments: Moments, keepbits: int | None) -> float:
    """Predicted storage NMSE_T from statistics: trace(W N Wᵀ) / trace(W Σ Wᵀ), N = diag(noise)."""
    W_DD = normalizer.W_DD
    noise_D = storage_noise_var(moments, keepbits)
    signal = float(np.trace(W_DD @ moments.covariance() @ W_DD.T))
    return float(np.sum(np.square(W_DD) * noise_D[None, :])) / signal


@dataclass(frozen=True)
class FidelityCheck:
    """One variant and token kind: measured storage and teacher-bf16 NMSE in the loss space, the gate."""

    variant: str
    kind: str
    storage_nmse: float
    teacher_bf16_nmse: float
    storage_min_cos: float
    model_nmse: float  # storage_nmse_model's prediction

    @property
    def ratio(self) -> float:
        """storage / teacher-bf16 NMSE (the gate wants ≤ GATE_RATIO)."""
        return self.storage_nmse / self.teacher_bf16_nmse if self.teacher_bf16_nmse > 0 else float("inf")

    @property
    def passed(self) -> bool:
        return self.ratio <= GATE_RATIO and self.storage_min_cos >= MIN_COSINE

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio, "passed": self.passed}

    @classmethod
    def from_dict(cls, d: dict) -> "FidelityCheck":
        return cls(**{k: d[k] for k in ("variant", "kind", "storage_nmse", "teacher_bf16_nmse",
                                        "storage_min_cos", "model_nmse")})


def check_variant(normalizer: Normalizer, kind: str, *, exact_ND: np.ndarray, stored_ND: np.ndarray,
                  bf16_ND: np.ndarray, moments: Moments, keepbits: int | None) -> FidelityCheck:
    """The fidelity check of one fitted normalizer on matching token sets (float32 teacher output,
    the same values as stored, the teacher's bf16-autocast output)."""
    return FidelityCheck(variant=normalizer.variant.value, kind=kind,
                         storage_nmse=nmse_in(normalizer, stored_ND, exact_ND),
                         teacher_bf16_nmse=nmse_in(normalizer, bf16_ND, exact_ND),
                         storage_min_cos=min_cosine_in(normalizer, stored_ND, exact_ND),
                         model_nmse=storage_nmse_model(normalizer, moments, keepbits))


def format_checks(checks: list[FidelityCheck]) -> list[str]:
    """One line per variant and kind, with a WARNING line for each that fails the gate."""
    lines = []
    for c in checks:
        verdict = "ok" if c.passed else "FAIL"
        lines.append(f"{c.variant:12s} {c.kind:8s} storage NMSE {c.storage_nmse:.3g} (model {c.model_nmse:.3g}) "
                     f"vs teacher bf16 {c.teacher_bf16_nmse:.3g}: ratio {c.ratio:.3g} (gate ≤ {GATE_RATIO}); "
                     f"min cos {c.storage_min_cos:.6f} (gate ≥ {MIN_COSINE}): {verdict}")
    failed = sorted({c.variant for c in checks if not c.passed})
    if failed:
        lines.append(f"WARNING: storage noise is not negligible against the teacher's bf16 noise in the loss space "
                     f"of {', '.join(failed)} (store with more mantissa bits, or read their results with care)")
    return lines
