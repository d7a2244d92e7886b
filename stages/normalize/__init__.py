"""Target normalization of PHI-S (arXiv 2410.01680): Hadamard matrices, variants, fitted normalizers,
denormalization folded into heads, and the per-teacher target losses of AM-RADIO (arXiv 2312.06709)."""

from stages.normalize.fold import fold_denormalization
from stages.normalize.hadamard import hadamard_matrix
from stages.normalize.losses import LossKind, target_loss
from stages.normalize.normalizer import (
    NORMALIZER_VERSION,
    Normalizer,
    NormalizerMismatchError,
    fit_normalizer,
    load_or_fit,
)
from stages.normalize.variants import (DEFAULT_EIG_FLOOR, SUMMARY_LOSSES, NormVariant, fit_affine, kind_variant,
                                      parse_summary_loss, storage_noise_var)

__all__ = [
    "DEFAULT_EIG_FLOOR", "LossKind", "NORMALIZER_VERSION", "NormVariant", "Normalizer",
    "NormalizerMismatchError", "fit_affine", "fit_normalizer", "fold_denormalization", "hadamard_matrix",
    "SUMMARY_LOSSES", "kind_variant", "load_or_fit", "parse_summary_loss", "storage_noise_var", "target_loss",
]
