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

For a variant that fails, ``remedy`` says what would serve it: the storage NMSE scales as 4^-k with the
kept mantissa bits k, so the gate's ratio r at k bits needs about k + ⌈log₄(r / GATE_RATIO)⌉ bits
(``pipeline extract --keepbits``; beyond 23 bits: lossless float32, ``--keepbits none``), or, for a
paper-exact whitening / standardization, its noise-floored variant (``pca_w_nf``, ...), which is another
method (``stages.normalize.variants``).

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


def bits_needed(check: FidelityCheck, keepbits: int | None) -> int | None:
    """Kept mantissa bits at which ``check``'s storage NMSE would pass the ratio gate (NMSE ∝ 4^-k); None
    when that is more than float32 holds (lossless storage is then needed) or the store is lossless."""
    from store_schema.codecs import FLOAT32_MANTISSA_BITS

    if keepbits is None or not np.isfinite(check.ratio):
        return None
    extra = max(1, int(np.ceil(np.log(check.ratio / GATE_RATIO) / np.log(4.0) - 1e-9)))  # exact powers of 4: no extra bit
    needed = int(keepbits) + extra
    return needed if needed <= FLOAT32_MANTISSA_BITS else None


def remedy(variant: str, failing: list[FidelityCheck], keepbits: int | None, passing: set[str]) -> str:
    """One sentence: what serves ``variant`` whose ``failing`` checks fail the gate on this store
    (more kept bits at extraction, or the noise-floored variant where there is one; ``passing`` = the
    variants that pass on every kind)."""
    from stages.normalize.variants import NormVariant

    if keepbits is None:
        fix = "the store is already lossless: the teacher's own noise is the limit here"
    else:
        need = [bits_needed(c, keepbits) for c in failing]
        fix = ("re-extract losslessly (`pipeline extract --keepbits none`)" if None in need else
               f"re-extract with `pipeline extract --keepbits {max(need)}` (this store keeps {keepbits})")
    alt = NormVariant.parse(variant).floored_alternative if variant in {v.value for v in NormVariant} else None
    if alt is not None:
        fix += (f", or train `{alt.value}` (this project's noise-floored variant, not the paper's method; "
                f"{'it passes here' if alt.value in passing else 'it fails here too'})")
    return f"{variant}: {fix}"


def format_checks(checks: list[FidelityCheck], keepbits: int | None = None) -> list[str]:
    """One line per variant and kind, with a WARNING line for the variants that fail the gate and one line
    per failing variant saying what would serve it (``remedy``; ``keepbits``: the store's kept bits)."""
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
        passing = {c.variant for c in checks} - set(failed)
        lines += ["  to serve " + remedy(v, [c for c in checks if c.variant == v and not c.passed], keepbits, passing)
                  for v in failed]
    return lines
