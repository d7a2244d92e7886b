"""Reading a finished (or interrupted) stage-two run back for evaluation (AM-RADIO arXiv 2312.06709,
PHI-S arXiv 2410.01680: teacher-matching errors are measured after the inverse map, in teacher space).

`load_run` rebuilds the student and heads from config.json + checkpoint.pt; the heads predict *normalized*
targets, and the returned normalizers (loaded from the store root, never refitted) map them back with
`invert`. `load_export` reads export.safetensors, whose heads already output teacher space.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from stages.distill.checkpoint import checkpoint_path, checkpoint_step, load_checkpoint
from stages.distill.config import RESUMABLE_FIELDS, DistillConfig
from stages.distill.train import CONFIG_NAME, METRICS_NAME, build_models
from stages.normalize import Normalizer, kind_variant
from store_schema.errors import DamagedFileError
from stages.students import HeadTarget, Student, TeacherHeads
from store_schema import location
from store_schema.layout import normalizer_path

EXPORT_NAME = "export.safetensors"


CONFIG_RECOVERY = ("It cannot be rebuilt from the checkpoint alone: restore it from a backup, or delete the run "
                   "directory (or pick another run name) to train again; nothing was retrained in its place")


def read_run_config(run_dir: Path) -> tuple[DistillConfig, dict[str, Any]]:
    """(config, the resolved config.json dict with manifest_hash and heads).

    A config.json that does not parse, lacks the resolved fields (manifest hash, heads, store
    fingerprints) or holds values no run could have been trained with raises DamagedFileError."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a distill run directory: no {CONFIG_NAME}")
    try:
        resolved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFileError(path, f"it is not valid JSON ({e})", CONFIG_RECOVERY) from e
    if not isinstance(resolved, dict):
        raise DamagedFileError(path, f"it holds a JSON {type(resolved).__name__}, not a run config", CONFIG_RECOVERY)
    missing = [k for k in ("student", "teachers", "root", "out_dir", "norm", "manifest_hash", "heads")
               if k not in resolved]
    if missing:
        raise DamagedFileError(path, f"fields {missing} are missing", CONFIG_RECOVERY)
    try:
        config = DistillConfig.from_dict(resolved)
        for h in resolved["heads"]:
            int(h["summary_dim"]), int(h["patch_dim"]), tuple(h["grid"]), str(h["name"])
    except (ValueError, TypeError, KeyError) as e:
        raise DamagedFileError(path, f"its values are not a valid run config ({e})", CONFIG_RECOVERY) from e
    return config, resolved


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
        raise DamagedFileError(Path(run_dir) / CONFIG_NAME,
                               f"it disagrees with checkpoint.pt, which records the config it was trained "
                               f"with ({detail}); one of the two files was altered or copied from another run",
                               CONFIG_RECOVERY)


def run_fingerprint(resolved: dict[str, Any]) -> str:
    """sha256 of what a run computes: its config.json dict without the cadence / location fields (log and
    checkpoint cadence, loader parallelism, device, paths), steps and schedule extensions included, plus the
    run_id drawn when the run started (a new run in the same folder has another fingerprint)."""
    ignored = RESUMABLE_FIELDS - {"steps"}
    kept = {k: v for k, v in resolved.items() if k not in ignored}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def run_progress(run_dir: Path) -> dict[str, Any]:
    """{"fingerprint", "steps" (the run's target), "checkpoint_step", "finished"} of a run directory."""
    _, resolved = read_run_config(run_dir)
    step = checkpoint_step(checkpoint_path(run_dir))
    return {"fingerprint": run_fingerprint(resolved), "steps": int(resolved["steps"]), "checkpoint_step": step,
            "finished": step >= int(resolved["steps"])}


def discard_run(run_dir: Path) -> None:
    """Remove what training wrote into a run (checkpoint, config, metrics, export) so a new run can start
    in its place; anything else in the folder (e.g. an old evaluation, rewritten by evaluate) is left."""
    run_dir = Path(run_dir)
    for path in (checkpoint_path(run_dir), run_dir / CONFIG_NAME, run_dir / METRICS_NAME, run_dir / EXPORT_NAME):
        path.unlink(missing_ok=True)


def build_run_models(config: DistillConfig, resolved: dict[str, Any]) -> tuple[Student, TeacherHeads]:
    """Student + heads shaped as recorded in config.json (random weights)."""
    targets = [HeadTarget(h["name"], int(h["summary_dim"]), int(h["patch_dim"]), tuple(h["grid"]))
               for h in resolved["heads"]]
    return build_models(config, targets)  # the same K rule as training (summary_tokens_for)


def load_normalizers(config: DistillConfig, resolved: dict[str, Any]) -> dict[str, dict[str, Normalizer]]:
    """{teacher: {kind: Normalizer}} as fitted for this run's variant (from the store root)."""
    out: dict[str, dict[str, Normalizer]] = {}
    if "stores" not in resolved:
        raise ValueError(f"{config.out_dir}/config.json records no store fingerprints (a run from an older "
                         "version); retrain it")
    for h in resolved["heads"]:
        kinds = ["summary", "patches"] if int(h["summary_dim"]) > 0 else ["patches"]
        out[h["name"]] = {}
        for kind in kinds:
            fitted = resolved.get("normalizers", {}).get(h["name"], {}).get(kind)
            if fitted is not None:  # what training used: variant per kind, hash of the fitting statistics
                variant, stats_hash = fitted["variant"], fitted["stats_hash"]
            else:  # a run from before config.json recorded its normalizers: whole-store statistics
                variant = kind_variant(config.norm, kind, config.summary_loss).value
                stats_hash = resolved["stores"][h["name"]]["stats_hash"][kind]
            path = normalizer_path(config.root, h["name"], kind, variant, stats_hash)
            if not location.is_file(path):
                raise FileNotFoundError(f"normalizer {path} of run {config.out_dir} is missing (store root moved?)")
            out[h["name"]][kind] = Normalizer.load(path)
    return out


def moved_root(run_dir: Path, config: DistillConfig, resolved: dict[str, Any], root: Any) -> DistillConfig:
    """The run's config with its stores read from `root` (a store root that was moved or copied), after
    checking that every teacher's store there is the one the run was trained on (its fingerprint: manifest,
    spec, weights, codec, grid, complete shards, statistics hashes). ValueError naming the differences."""
    import dataclasses

    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    root = location.as_location(root)
    recorded = resolved.get("stores")
    if not recorded:
        raise ValueError(f"{run_dir}/config.json records no store fingerprints; --root cannot be checked")
    for teacher, want in recorded.items():
        found = json.loads(json.dumps(open_teacher_store(teacher_store_path(root, teacher)).fingerprint()))
        diff = sorted(k for k in set(want) | set(found) if want.get(k) != found.get(k))
        if diff:
            raise ValueError(f"--root {root}: the {teacher} store there is not the one run {run_dir} was trained on "
                             f"(it differs in {', '.join(diff)}); give the root that holds the run's stores")
    return dataclasses.replace(config, root=root)


def load_run(run_dir: Path, *, root: Any = None) -> tuple[DistillConfig, Student, TeacherHeads,
                                                          dict[str, dict[str, Normalizer]]]:
    """(config, student, heads, normalizers) of a run, weights from its latest checkpoint, in eval mode.

    heads output normalized targets; normalizers[teacher][kind].invert(...) maps them to teacher space.
    root: read the stores (and fitted normalizers) from this store root instead of the one in config.json
    (a moved store; checked by `moved_root`).
    """
    config, resolved = read_run_config(run_dir)
    if root is not None:
        config = moved_root(run_dir, config, resolved, root)
    student, heads = build_run_models(config, resolved)
    ckpt = load_checkpoint(checkpoint_path(run_dir))
    check_config_matches_checkpoint(run_dir, config, ckpt)
    try:
        student.load_state_dict(ckpt["student"])
        heads.load_state_dict(ckpt["heads"])
    except (RuntimeError, KeyError) as e:
        raise DamagedFileError(checkpoint_path(run_dir), "its weights do not fit the models config.json "
                               f"describes ({str(e).splitlines()[0][:200]})", CONFIG_RECOVERY) from e
    return config, student.eval(), heads.eval(), load_normalizers(config, resolved)


def load_export(run_dir: Path) -> tuple[DistillConfig, Student, TeacherHeads]:
    """(config, student, heads) from export.safetensors: the heads output teacher-space values."""
    config, resolved = read_run_config(run_dir)
    student, heads = build_run_models(config, resolved)
    path = Path(run_dir) / EXPORT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {EXPORT_NAME} in {run_dir}; run `pipeline export {run_dir}` first")
    state = load_file(str(path))
    student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    heads.load_state_dict({k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")})
    return config, student.eval(), heads.eval()
