"""Stage two of offline agglomerative distillation (AM-RADIO arXiv 2312.06709) with PHI-S target
normalization (arXiv 2410.01680): store-fed loader, training loop, checkpoints, export, run loading.

Never imports stages.teachers model code: everything stage two needs is in the stores. Import the
submodules directly (`from stages.distill.train import train`).
"""


from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stages.distill.exported import ExportedStudent


def load_exported(path: Path | str, **kwargs: Any) -> ExportedStudent:
    """The exported student as a backbone with teacher-space adaptors (`stages.distill.exported`)."""
    from stages.distill.exported import load_exported as _load

    return _load(path, **kwargs)
