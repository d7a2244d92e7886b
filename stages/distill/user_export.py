"""`pipeline export RUN`: every form a user takes a trained agglomerative student away in (AM-RADIO, arXiv
2312.06709; teacher-space adaptors by PHI-S's inverse map folded in, arXiv 2410.01680).

1. `export.safetensors` from the last checkpoint (stages/distill/export.py; the forms derived from an earlier
   export are removed), read back through the one loader (stages/distill/exported.py), so every other form
   is made from exactly what users load;
2. for a ViT student, the trunk in timm's layout (`timm/`, stages/distill/timm_layout.py);
3. with `onnx=True`, `export.onnx` (stages/distill/onnx_export.py), checked under onnxruntime against PyTorch
   at other batch sizes than the trace's; a deviation past ONNX_TOLERANCE is an error, not a warning.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from safetensors import safe_open

from stages.distill.export import export_run
from stages.distill.exported import load_exported
from stages.distill.run_dir import derived_export_paths, onnx_path, timm_dir

if TYPE_CHECKING:
    from stages.distill.onnx_export import OnnxCheck


@dataclass(frozen=True)
class ExportedFiles:
    """What `export_user_formats` wrote (None: not asked for / not applicable) and the ONNX check."""

    safetensors: Path
    replaced: list[Path]  # derived forms of the earlier export, removed (rewritten below when asked for)
    timm: Path | None
    onnx: Path | None
    onnx_check: OnnxCheck | None


def export_user_formats(run_dir: Path, *, onnx: bool = False, timm: bool = True) -> ExportedFiles:
    """Write RUN/export.safetensors, RUN/timm/ (ViT students, when `timm`) and RUN/export.onnx (when `onnx`)."""
    run_dir = Path(run_dir)
    replaced = derived_export_paths(run_dir)  # export_run removes them: they describe the earlier export
    path = export_run(run_dir)
    model = load_exported(path)
    timm_out = None
    if timm:
        from stages.distill.timm_layout import has_timm_trunk, write_timm_trunk

        if has_timm_trunk(model):
            timm_out = _replace_dir(timm_dir(run_dir), lambda tmp: write_timm_trunk(model, tmp))
    onnx_out = check = None
    if onnx:
        from stages.distill.onnx_export import ONNX_TOLERANCE, check_onnx, write_onnx

        with safe_open(str(path), framework="pt") as f:
            config_json = (f.metadata() or {})["config"]
        onnx_out = write_onnx(model, onnx_path(run_dir), metadata={"config": config_json})
        check = check_onnx(model, onnx_out)
        if check.worst > ONNX_TOLERANCE:
            raise ValueError(f"{onnx_out}: onnxruntime's outputs deviate from PyTorch's by {check.worst:.2e} "
                             f"(> {ONNX_TOLERANCE:g}; per output: {check.deviation}); the graph is kept for "
                             "inspection, do not use it")
    return ExportedFiles(path, replaced, timm_out, onnx_out, check)


def _replace_dir(final: Path, write: Callable[[Path], Path]) -> Path:
    """Write a folder beside `final`, then swap it in (an interrupted export leaves the old one whole)."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
