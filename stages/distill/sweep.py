"""One run of the normalization sweep (PHI-S, arXiv 2410.01680, over an AM-RADIO arXiv 2312.06709 store):
whether to train, reuse, resume or replace what its run directory holds.

`pipeline distill --sweep` (what dvc.yaml's distill stage and `pipeline demo` run) trains each variant and
seed of params.yaml's sweep into <runs_dir>/<norm>-seed<seed> through `train_variant`:

  no checkpoint                                   a fresh run                       "trained"
  a finished run (export present), same config    nothing to do                     "reused"
  an interrupted run, same config                 resumed from its checkpoint       "resumed"
  a run that cannot be resumed with this config   replaced by a new run             "retrained"
  (a field a resume may not change, other steps,  (replace_conflicting: DVC re-ran
   another manifest, changed stored targets)       the stage, its cache keeps the
                                                   old outputs) or refused (ValueError)

A run of N steps is trained on an N-step schedule, so other `steps` is a conflict, never an extension
(`pipeline distill --resume --extend` extends a run on purpose). Damaged files (config.json, checkpoint,
normalizers, manifest) stop it with an error naming the file; they are never a reason to retrain.
"""

from __future__ import annotations

from typing import Callable

from stages.distill.config import DistillConfig
from stages.distill.loader import StoreSet
from stages.distill.run_dir import checkpoint_path, discard_run, export_path, read_run_config
from stages.distill.train import changed_stores, train
from store_schema.layout import manifest_path
from store_schema.manifest import manifest_hash


def train_variant(config: DistillConfig, *, replace_conflicting: bool, say: Callable[[str], None] = print) -> str:
    """Train one sweep variant into config.out_dir, reusing or resuming what is there; returns what it did
    (see the module docstring). `say` reports a replacement before the new run starts."""
    run = config.out_dir
    if not checkpoint_path(run).is_file():
        train(config)
        return "trained"
    saved, resolved = read_run_config(run)
    conflicts = resume_conflicts(config, saved, resolved)
    if conflicts and not replace_conflicting:
        raise ValueError(f"{run} holds a run that cannot be resumed with this config: {'; '.join(conflicts)}. "
                         "Delete it or set another distill.runs_dir")
    if conflicts:
        say(f"distill {run}: {'; '.join(conflicts)}: training a new run in its place")
        discard_run(run)
        train(config)
        return "retrained"
    if export_path(run).is_file() and saved.steps == config.steps:
        return "reused"
    train(config, resume=True)
    return "resumed"


def resume_conflicts(config: DistillConfig, saved: DistillConfig, resolved: dict) -> list[str]:
    """Why the saved run (config `saved`, config.json dict `resolved`) cannot be resumed with `config`."""
    mine, theirs = saved.to_dict(), config.to_dict()
    why = [f"{k} {mine[k]!r} -> {theirs[k]!r}" for k in saved.resume_conflicts(config)]
    if config.steps != saved.steps:  # a run of N steps is trained on an N-step schedule: never extended here
        why.append(f"steps {saved.steps} -> {config.steps} (a {config.steps}-step run needs a {config.steps}-step "
                   "schedule)")
    if resolved.get("manifest_hash") != manifest_hash(manifest_path(config.root)):
        why.append("the manifest changed")
    else:
        changed = changed_stores(resolved, StoreSet(config.root, config.teachers, norm=config.norm,
                                                    summary_loss=config.summary_loss))
        if changed:
            why.append(f"the stored targets of {changed} changed")
    return why
