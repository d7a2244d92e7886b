"""Reading a finished (or interrupted) stage-two run back for evaluation (AM-RADIO arXiv 2312.06709,
PHI-S arXiv 2410.01680: teacher-matching errors are measured after the inverse map, in teacher space).

`load_run` rebuilds the student and heads from config.json + checkpoint.pt; the heads predict *normalized*
targets, and the returned normalizers (loaded from the store root, never refitted) map them back with
`invert`. The exported student (export.safetensors, heads in teacher space) has its own loader,
`stages.distill.exported.load_exported`. The run directory's files: stages/distill/run_dir.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from stages.distill.checkpoint import checkpoint_step, load_checkpoint
from stages.distill.config import RESUMABLE_FIELDS, DistillConfig
from stages.distill.run_dir import (CONFIG_RECOVERY, check_config_matches_checkpoint, checkpoint_path,
                                    read_run_config)
from stages.normalize import Normalizer, kind_variant
from stages.students import Student, TeacherHeads
from stages.students.build import build_models, heads_from_json
from store_schema.errors import DamagedFileError
from store_schema import location
from store_schema.layout import normalizer_path


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


def build_run_models(config: DistillConfig, resolved: dict[str, Any]) -> tuple[Student, TeacherHeads]:
    """Student + heads shaped as recorded in config.json (random weights)."""
    return build_models(config, heads_from_json(resolved["heads"]))  # the same K rule as training


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
