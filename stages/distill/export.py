"""Export a stage-two run with denormalization folded into its heads (PHI-S arXiv 2410.01680: predictions
are mapped back to each teacher's space by the inverse of the fitted affine normalizer).

For each teacher, the last Linear of the summary head and of the feature head is replaced by
`fold_denormalization(linear, normalizer)`, so the exported model outputs teacher-space values with no
extra op (bilinear grid resizing after the Linear commutes with the affine map, see students/heads.py).
The file is safetensors: "student.*" and "heads.*" tensors; in the metadata the run's resolved config
(JSON, "config"), "outputs" = "teacher_space" and the student's input preprocessing (JSON,
"preprocessing": mean, std, input size, patch size), so `stages.distill.exported.load_exported` needs
nothing but the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import save

from store_schema.io_errors import write_guard

from stages.distill.run import load_run
from stages.distill.run_dir import export_path, read_run_config, remove_derived_exports
from stages.normalize import Normalizer, fold_denormalization
from stages.students import TeacherHeads
from stages.students.preprocess import preprocessing


def fold_heads(heads: TeacherHeads, normalizers: dict[str, dict[str, Normalizer]]) -> TeacherHeads:
    """Replace every head's last Linear by its folded (teacher-space) version, in place; returns heads."""
    for name in heads.patch_heads:
        if name in heads.summary_heads:
            mlp = heads.summary_heads[name]
            mlp[-1] = fold_denormalization(mlp[-1], normalizers[name]["summary"])
        mlp = heads.patch_heads[name]
        mlp[-1] = fold_denormalization(mlp[-1], normalizers[name]["patches"])
    return heads


def export_run(run_dir: Path) -> Path:
    """Write <run_dir>/export.safetensors from the latest checkpoint; returns its path. The forms derived
    from an earlier export (export.onnx, timm/) are removed first: they would describe other weights."""
    run_dir = Path(run_dir)
    _, resolved = read_run_config(run_dir)
    _, student, heads, normalizers = load_run(run_dir)
    fold_heads(heads, normalizers)
    tensors = {f"student.{k}": v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    tensors.update({f"heads.{k}": v.detach().cpu().contiguous() for k, v in heads.state_dict().items()})
    path = export_path(run_dir)
    remove_derived_exports(run_dir)
    tmp = path.with_name(path.name + ".tmp")
    prep = preprocessing(img_size=student.img_size, patch_size=student.stride)
    data = save(tensors, metadata={"config": json.dumps(resolved, sort_keys=True), "outputs": "teacher_space",
                                   "preprocessing": json.dumps(prep, sort_keys=True)})
    with write_guard(path, "the export", kept="the checkpoint is kept; re-run `pipeline export` once there is space"):
        try:
            tmp.write_bytes(data)  # serialized in memory first: a full disk is then a plain OSError
            os.chmod(tmp, 0o666 & ~_umask())  # a run's files are all created alike
            tmp.replace(path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
