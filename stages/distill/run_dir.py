"""The owner of a stage-two run directory (AM-RADIO arXiv 2312.06709 stage two; PHI-S arXiv 2410.01680
variants): the one place its file names are spelled and its config file is read and written, as
store_schema/layout.py is for the store.

```
<runs_dir>/<run>/              one run: a variant and seed of the sweep, or a `pipeline distill --run-name`
  config.json                  the resolved DistillConfig + manifest hash, run id, store fingerprints,
                               fitted normalizers, head shapes, schedule extensions (write_run_config)
  checkpoint.pt                latest training state (stages/distill/checkpoint.py writes it)
  metrics.jsonl                one JSON line per logged step (the loss curve)
  export.safetensors           student + teacher-space heads + preprocessing (stages/distill/export.py)
  export.onnx                  the same as one ONNX graph, dynamic batch (`pipeline export --onnx`; onnx_export.py)
  timm/                        a ViT student's trunk in timm's layout: model.safetensors + config.json
                               (`pipeline export`; stages/distill/timm_layout.py)
  eval/metrics.json            `pipeline evaluate`'s result (stages/evaluate/evaluate.py)
<runs_dir>/<run>.lease         held while a run trains into the directory (store_schema.layout.lease_path)
```
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from stages.distill.config import DistillConfig
from stages.students.build import heads_from_json
from store_schema.errors import DamagedFileError
from store_schema.io_errors import write_guard
from store_schema.layout import lease_path

CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
EXPORT_NAME = "export.safetensors"
ONNX_NAME = "export.onnx"
TIMM_DIR = "timm"
EVAL_DIR, EVAL_FILE = "eval", "metrics.json"

CONFIG_RECOVERY = ("It cannot be rebuilt from the checkpoint alone: restore it from a backup, or delete the run "
                   "directory (or pick another run name) to train again; nothing was retrained in its place")
_RESOLVED_FIELDS = ("student", "teachers", "root", "out_dir", "norm", "manifest_hash", "heads")


def config_path(run_dir: Path) -> Path:
    """<run>/config.json"""
    return Path(run_dir) / CONFIG_NAME


def checkpoint_path(run_dir: Path) -> Path:
    """<run>/checkpoint.pt"""
    return Path(run_dir) / CHECKPOINT_NAME


def metrics_path(run_dir: Path) -> Path:
    """<run>/metrics.jsonl"""
    return Path(run_dir) / METRICS_NAME


def export_path(run_dir: Path) -> Path:
    """<run>/export.safetensors"""
    return Path(run_dir) / EXPORT_NAME


def onnx_path(run_dir: Path) -> Path:
    """<run>/export.onnx"""
    return Path(run_dir) / ONNX_NAME


def timm_dir(run_dir: Path) -> Path:
    """<run>/timm (model.safetensors + config.json in timm's layout)"""
    return Path(run_dir) / TIMM_DIR


def derived_export_paths(run_dir: Path) -> list[Path]:
    """The forms `pipeline export` derives from export.safetensors (ONNX graph and its external data, timm
    folder) that exist now: stale once export.safetensors is rewritten."""
    onnx = onnx_path(run_dir)
    return [p for p in (onnx, onnx.with_name(onnx.name + ".data"), timm_dir(run_dir)) if p.exists()]


def remove_derived_exports(run_dir: Path) -> list[Path]:
    """Remove the derived forms (see derived_export_paths); returns what was removed."""
    gone = derived_export_paths(run_dir)
    for path in gone:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return gone


def eval_path(run_dir: Path) -> Path:
    """<run>/eval/metrics.json"""
    return Path(run_dir) / EVAL_DIR / EVAL_FILE


def eval_cache_dir(run_dir: Path) -> Path:
    """<run>/eval/cache: the run's feature caches (an output of dvc.yaml's evaluate stage, so that
    `dvc exp apply` restores it with the run)."""
    return Path(run_dir) / EVAL_DIR / "cache"


def eval_cache_path(run_dir: Path, dataset: str) -> Path:
    """<run>/eval/cache/<dataset>.zarr: the run's student features over one evaluation dataset
    (stages/evaluate/feature_cache.py; docs/EVALUATION.md)."""
    if not dataset or "/" in dataset or dataset.startswith("."):
        raise ValueError(f"dataset name {dataset!r} is not a valid path component")
    return eval_cache_dir(run_dir) / f"{dataset}.zarr"


def run_lease_path(run_dir: Path) -> Path:
    """<run>.lease, beside the run directory (the lease guards the whole directory)."""
    return lease_path(Path(run_dir))


def read_config_json(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.json as a plain dict, unchecked (reports read single fields of it)."""
    path = config_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no {CONFIG_NAME}")
    return json.loads(path.read_text())


def read_run_config(run_dir: Path) -> tuple[DistillConfig, dict[str, Any]]:
    """(config, the resolved config.json dict with manifest_hash and heads).

    A config.json that does not parse, lacks the resolved fields (manifest hash, heads, store
    fingerprints) or holds values no run could have been trained with raises DamagedFileError."""
    path = config_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a distill run directory: no {CONFIG_NAME}")
    try:
        resolved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFileError(path, f"it is not valid JSON ({e})", CONFIG_RECOVERY) from e
    if not isinstance(resolved, dict):
        raise DamagedFileError(path, f"it holds a JSON {type(resolved).__name__}, not a run config", CONFIG_RECOVERY)
    missing = [k for k in _RESOLVED_FIELDS if k not in resolved]
    if missing:
        raise DamagedFileError(path, f"fields {missing} are missing", CONFIG_RECOVERY)
    try:
        config = DistillConfig.from_dict(resolved)
        heads_from_json(resolved["heads"])
    except (ValueError, TypeError, KeyError) as e:
        raise DamagedFileError(path, f"its values are not a valid run config ({e})", CONFIG_RECOVERY) from e
    return config, resolved


def write_run_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    """Write config.json atomically (other ranks may be reading it); a full disk keeps the previous one."""
    path = config_path(run_dir)
    tmp = path.with_name(CONFIG_NAME + ".tmp")
    with write_guard(path, "the run's config.json", kept="the previous config.json is kept"):
        tmp.write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


def check_config_matches_checkpoint(run_dir: Path, config: DistillConfig, ckpt: dict[str, Any]) -> None:
    """config.json and checkpoint.pt were written by the same run: the checkpoint records the config it was
    trained with, so an altered config.json (or a checkpoint copied from another run) is caught here."""
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        return
    try:
        conflicts = DistillConfig.from_dict(saved).resume_conflicts(config)
    except (ValueError, TypeError) as e:
        raise DamagedFileError(checkpoint_path(run_dir), f"the config it records is invalid ({e})",
                               "Delete the run directory to train again") from e
    if conflicts:
        mine = config.to_dict()
        detail = "; ".join(f"{k}: config.json {mine[k]!r}, checkpoint {saved.get(k)!r}" for k in conflicts)
        raise DamagedFileError(config_path(run_dir),
                               f"it disagrees with checkpoint.pt, which records the config it was trained "
                               f"with ({detail}); one of the two files was altered or copied from another run",
                               CONFIG_RECOVERY)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's logged training steps (metrics.jsonl), in file order."""
    path = metrics_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"run {run_dir} has no {METRICS_NAME}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_eval(run_dir: Path) -> dict[str, Any]:
    """The run's eval/metrics.json; a clear error when the run was not evaluated yet."""
    path = eval_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"run {run_dir} has not been evaluated: no {path}; run `pipeline evaluate {run_dir}`")
    return json.loads(path.read_text())


def discard_run(run_dir: Path) -> None:
    """Remove what training and `pipeline export` wrote into a run (checkpoint, config, metrics, exports) so a
    new run can start in its place; anything else in the folder (e.g. an old evaluation, rewritten by
    evaluate) is left."""
    for path in (checkpoint_path(run_dir), config_path(run_dir), metrics_path(run_dir), export_path(run_dir)):
        path.unlink(missing_ok=True)
    remove_derived_exports(run_dir)


@contextmanager
def kept_only_once_checkpointed(run_dir: Path, *, owner: bool = True) -> Iterator[None]:
    """A new run directory the block fails to checkpoint is removed again (config.json, metrics.jsonl and any
    folder created for it), so a refused or crashed first attempt leaves nothing behind; a directory that
    existed before, or one holding a checkpoint (an interrupted run resumes from it), is kept.

    owner: False on the ranks other than 0 of a torchrun group (rank 0 owns the directory)."""
    top = None
    p = Path(run_dir).absolute()
    while owner and not p.exists() and p != p.parent:
        top, p = p, p.parent
    try:
        yield
    except BaseException:
        if top is not None and not checkpoint_path(run_dir).exists():
            shutil.rmtree(top, ignore_errors=True)
        raise
