"""Stage two: train a student + per-teacher heads from the feature store (AM-RADIO arXiv 2312.06709), with
each teacher's targets normalized by a fitted normalizer (PHI-S arXiv 2410.01680, or one of the variants
it compares; loss-side variants train on raw targets with their own loss).

Loss = Σ_t w_t · (summary_weight · L_s(summary_t) + feature_weight · L(patches_t)), L = target_loss of the
variant's loss kind on normalized targets; L_s = cosine on raw summaries (summary_loss "cosine", the
default, as in both papers) or the variant's own (summary_loss "variant"). The AdaLoss variants (ada_mse,
ada_phis; PHI-S Table 12) divide every term by a moving average of itself (``stages.normalize.adaloss``),
whose state is checkpointed with the run. AdamW (no weight decay on
biases, norms, and the tokens / position embeddings the model's `no_weight_decay()` names, as in timm),
linear warmup then cosine decay to zero, bf16 autocast on CUDA only, optional gradient-norm clipping (off by
default, so every variant gets the same optimizer); the share of clipped steps is logged as ``clip_frac``
and the pre-clip gradient norm as ``grad_norm``. The run directory (docs/ARCHITECTURE.md "Run directory") gets
config.json, checkpoint.pt (every ckpt_every steps and at the end), metrics.jsonl and, when the run
finishes, export.safetensors. Stage two never touches a teacher model: everything comes from the stores.

Resume (`train(resume=True)`) continues from checkpoint.pt and refuses a config that differs from the
saved config.json outside config.RESUMABLE_FIELDS (the error names each field, saved vs requested). A run
of N steps is trained on an N-step schedule: a resume with other steps is refused, unless the caller asks
to extend the run (`extend=True`): the warmup-cosine schedule is then recomputed for the new total from
the resumed step on (the LR jumps there), and config.json's "extensions" records it. metrics.jsonl is cut
back to the checkpoint's step; a torn final line (a process killed mid-write) is dropped, a corrupt earlier
line is an error.

Checkpoints: every ckpt_every steps, every ckpt_minutes of wall time, at the end, and when SIGINT / SIGTERM
stops the run (train then raises TrainingInterrupted after writing it, so `--resume` continues).

Shape legend: B batch, h/w teacher grid, C channels, H/W pixel sides.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from stages.distill.checkpoint import TrainState, load_checkpoint, restore_rng_states, save_checkpoint
from stages.distill.config import DistillConfig, check_resumable, parse_bytes
from stages.distill.ddp import DistContext, all_reduce_mean, barrier, device_for
from stages.distill.loader import LoaderState, StoreBatches, StoreSet, targets_on_device
from stages.distill.partition_loader import (make_partition_loader, partition_datasets, states_after,
                                             teacher_rows)
from stages.distill.export import export_run
from stages.distill.run_dir import (CONFIG_NAME, check_config_matches_checkpoint, checkpoint_path, config_path,
                                    kept_only_once_checkpointed,
                                    metrics_path, read_run_config, write_run_config)
from stages.distill.run_lease import run_lease
from stages.normalize import kind_variant, target_loss
from stages.normalize.adaloss import AdaLoss
from stages.students import HeadTarget, Student, TeacherHeads
from stages.students.build import build_models, heads_to_json
from stages.students.preprocess import student_pixels
from stages.students.registry import student_pretrained_name
from stages.students.weights import StudentInit, load_student_weights, resolve_student_weights
from stages.teachers.resize import batch_frames, content_tokens
from store_schema.io_errors import write_guard
from store_schema.lease import Lease, LeaseOptions
from store_schema.location import absolute


log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM stopped a run after it wrote a checkpoint at `step` (resume with --resume)."""

    def __init__(self, run_dir: Path, step: int, steps: int, signum: int) -> None:
        self.run_dir, self.step, self.steps, self.signum = run_dir, step, steps, signum
        super().__init__(f"{signal.Signals(signum).name} at step {step} of {steps}: checkpoint written to "
                         f"{checkpoint_path(run_dir)}; continue with `pipeline distill ... --resume` (same flags)")


class _StopFlag:
    """Set by SIGINT / SIGTERM while the loop runs (the loop checkpoints and stops at the next step)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now, as without the handler
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class WarmupCosine:
    """LR multiplier: linear warmup over `warmup` steps, then cosine decay to 0 at `total` steps."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = int(warmup), int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass(frozen=True)
class PartInput:
    """One resolution partition's input to a step: pixels, the stores it trains, the rows each store's heads
    run on (None: all; PHI-S per-teacher batches) and whether the student attends in windows."""

    x_BCHW: torch.Tensor
    teachers: tuple[str, ...]
    rows: dict[str, slice] | None = None
    windowed: bool = False
    frames: dict[str, torch.Tensor] = field(default_factory=dict)  # [B, 4] per store with its own resize rule

    def loss_frames(self) -> dict[str, torch.Tensor]:
        """The frames of the rows each store's loss is computed on."""
        return {t: f if self.rows is None else f[self.rows[t]] for t, f in self.frames.items()}


class Distiller(nn.Module):
    """Student trunk + teacher heads as one module (what DDP wraps). `forward(x)` predicts every teacher;
    `forward(parts=[...])` runs every resolution partition in one call (one DDP forward per step)."""

    def __init__(self, student: Student, heads: TeacherHeads) -> None:
        super().__init__()
        self.student, self.heads = student, heads

    def forward(self, x_BCHW: torch.Tensor | None = None, frames: dict[str, torch.Tensor] | None = None, *,
                parts: list[PartInput] | None = None) -> Any:
        if parts is None:
            return self.heads(self.student(x_BCHW), frames=frames)
        out = []
        for p in parts:
            trunk = self.student(p.x_BCHW, windowed=True) if p.windowed else self.student(p.x_BCHW)
            out.append(self.heads(trunk, frames=p.frames or None, only=p.teachers, rows=p.rows))
        return out


def head_targets(stores: StoreSet) -> list[HeadTarget]:
    """One HeadTarget per selected teacher, from the stores' specs and storage grids."""
    return [HeadTarget(t, s.summary_dim, s.patch_dim, s.grid) for t, s in stores.stores.items()]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names that get no weight decay: every tensor of rank < 2 (biases, norms) and the
    tensors a submodule's ``no_weight_decay()`` names (timm: cls / register tokens, position embeddings)."""
    names = {n for n, p in model.named_parameters() if p.ndim < 2}
    params = dict(model.named_parameters())
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if not callable(fn):
            continue
        for rel in fn():
            full = f"{prefix}.{rel}" if prefix else rel
            names |= {n for n in params if n == full or n.startswith(full + ".")}
    return names


def make_optimizer(config: DistillConfig, model: nn.Module) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no weight decay on `no_weight_decay_names`) and its warmup-cosine schedule."""
    exempt = no_weight_decay_names(model)
    decay = [p for n, p in model.named_parameters() if n not in exempt]
    no_decay = [p for n, p in model.named_parameters() if n in exempt]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(config.warmup_steps, config.steps))
    return optimizer, scheduler


def normalize_targets(raw: dict[str, torch.Tensor], normalizers: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Each teacher's fitted normalizer applied to its float32 targets where they are (the training
    device): one batched matmul (y − μ) Wᵀ per teacher and token kind. Keys "<t>/<kind>"."""
    out = {}
    for key, y in raw.items():
        teacher, kind = key.split("/")
        out[key] = normalizers[teacher][kind].apply(y).to(torch.float32)
    return out


def distill_loss(config: DistillConfig, preds: dict[str, tuple[torch.Tensor | None, torch.Tensor]],
                 targets: dict[str, torch.Tensor], device: torch.device, *, ada: AdaLoss | None = None,
                 reduce: Any = None, frames: dict[str, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total weighted loss and the per-teacher parts ({"loss/<t>/summary", "loss/<t>/patches"}) against
    normalized targets on `device` ({"<t>/patches", "<t>/summary"}). frames ({teacher: [B, 4]}, padded
    teachers): tokens of padding (`content_tokens` False) carry no loss.

    An AdaLoss variant (``config.norm.adaptive``) needs ``ada``: each term is divided by its moving
    average (updated here with this step's values, averaged over ranks by ``reduce``), and the weights
    are added to the parts as "ada_w/<t>/<kind>"."""
    kind = config.norm.loss
    summary_kind = kind_variant(config.norm, "summary", config.summary_loss).loss
    terms: dict[str, torch.Tensor] = {}
    for t in config.teachers:
        summary_BC, patches_BhwC = preds[t]
        content_Bhw = None
        if frames is not None and t in frames:
            content_Bhw = content_tokens(frames[t], tuple(patches_BhwC.shape[1:3])).to(patches_BhwC.device)
        terms[f"loss/{t}/patches"] = target_loss(kind, patches_BhwC.float(), targets[f"{t}/patches"],
                                                 mask_N=content_Bhw)
        if summary_BC is not None:
            terms[f"loss/{t}/summary"] = target_loss(summary_kind, summary_BC.float(), targets[f"{t}/summary"])
    parts: dict[str, torch.Tensor] = {name: term.detach() for name, term in terms.items()}
    w = {name: 1.0 for name in terms}  # AdaLoss weights (1.0: the plain sum, bit-identical to it)
    if config.norm.adaptive:
        if ada is None:
            raise ValueError(f"variant {config.norm.value} divides each loss term by its moving average: "
                             "distill_loss needs its AdaLoss state (ada=)")
        w = ada.update({name: float(term.detach()) for name, term in terms.items()}, reduce)
        parts.update({"ada_w/" + name.removeprefix("loss/"): torch.tensor(v, device=device) for name, v in w.items()})
    total = torch.zeros((), device=device)
    for t in config.teachers:
        key = f"loss/{t}/patches"
        teacher_loss = (config.feature_weight * w[key]) * terms[key]
        key = f"loss/{t}/summary"
        if key in terms:
            teacher_loss = teacher_loss + (config.summary_weight * w[key]) * terms[key]
        total = total + config.teacher_weight(t) * teacher_loss
    return total, parts


def changed_stores(resolved: dict[str, Any], stores: StoreSet) -> list[str]:
    """Teachers whose store no longer holds the targets a run (its config.json dict) was trained on."""
    saved = resolved.get("stores", {})
    return sorted(t for t, s in stores.stores.items() if saved.get(t) != s.fingerprint())


def _schedule_change(saved: dict[str, Any], config: DistillConfig, *, extend: bool, run_dir: Path) -> list[dict]:
    """The run's recorded extensions, with a new one when `config` extends the saved run (steps grew and
    `extend`); raises ValueError for other steps without `extend`, or fewer steps."""
    extensions = list(saved.get("extensions", []))
    old = int(saved["steps"])
    if config.steps == old:
        return extensions
    if not extend:
        raise ValueError(
            f"cannot resume {run_dir} with steps={config.steps}: it is a {old}-step run (trained on a {old}-step "
            f"schedule), and a run of N steps is trained on an N-step schedule. Train a new run (another "
            f"--run-name / --out, or delete {run_dir}), or pass --extend to continue its weights on a schedule "
            f"recomputed for {config.steps} steps (the learning rate jumps where it resumes)")
    if config.steps < old:
        raise ValueError(f"cannot extend {run_dir} from {old} to {config.steps} steps: steps may only grow")
    extensions.append({"from_steps": old, "to_steps": config.steps,
                       "schedule": f"warmup-cosine of {old} steps up to the resumed step, then the warmup-cosine "
                                   f"of {config.steps} steps from there on (the learning rate jumps at the "
                                   f"resumed step)"})
    return extensions


def _prepare_run_dir(config: DistillConfig, stores: StoreSet, *, resume: bool, is_main: bool,
                     extend: bool = False, student_init: StudentInit | None = None) -> dict[str, Any] | None:
    """Refuse a resume whose saved config or manifest differs; (re)write config.json on rank 0."""
    out = config.out_dir
    ckpt = checkpoint_path(out)
    if resume and not ckpt.is_file():
        what = ("the run was stopped before its first checkpoint" if config_path(out).is_file()
                else "there is no run there yet")
        raise ValueError(f"--resume: nothing to resume at {out} ({what}; {ckpt.name} does not exist); run the same "
                         "command without --resume to start the run")
    extensions: list[dict] = []
    run_id = uuid.uuid4().hex  # a fresh run: evaluations of an earlier run in this folder are stale
    if not resume and ckpt.is_file():
        raise ValueError(f"{out} already holds a run (checkpoint.pt); pass --resume to continue it or choose "
                         f"another output directory / run name")
    if resume:
        if not config_path(out).is_file():
            raise ValueError(f"cannot resume {out}: {CONFIG_NAME} is missing, so its config cannot be checked")
        saved = read_run_config(out)[1]  # a damaged config.json: DamagedFileError naming it
        if saved.get("manifest_hash") != stores.manifest.hash:
            raise ValueError(f"cannot resume {out}: it was trained on manifest {saved.get('manifest_hash')}, "
                             f"the stores now have {stores.manifest.hash}")
        check_resumable(DistillConfig.from_dict(saved), config, run_dir=out)
        extensions = _schedule_change(saved, config, extend=extend, run_dir=out)
        run_id = saved.get("run_id", run_id)
        init_identity = saved.get("student_init")
        changed = changed_stores(saved, stores)
        if changed:
            raise ValueError(f"cannot resume {out}: the stored targets of {changed} changed since it was trained "
                             "(statistics, codec, grid or spec differ); train a new run")
        # Read (and check) the checkpoint before config.json is rewritten: a damaged checkpoint must leave
        # the run exactly as it was, never a config.json that claims the new step count.
        ckpt_data = load_checkpoint(ckpt)
        check_config_matches_checkpoint(out, DistillConfig.from_dict(saved), ckpt_data)
    else:
        ckpt_data = None
        init_identity = None if student_init is None else student_init.identity()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:  # a run killed before its first checkpoint leaves metrics that no longer belong
            metrics_path(out).unlink(missing_ok=True)
        resolved = {**config.to_dict(), "root": absolute(config.root),  # evaluated from any directory
                    "manifest_hash": stores.manifest.hash, "run_id": run_id,
                    "extensions": extensions,
                    "stores": {t: s.fingerprint() for t, s in stores.stores.items()},
                    "normalizers": {t: {k: {"variant": n.variant.value, "stats_hash": n.stats_hash, "split": n.split}
                                        for k, n in kinds.items()} for t, kinds in stores.normalizers.items()},
                    "heads": heads_to_json(head_targets(stores))}
        if init_identity is not None:  # where the student's initial weights came from (sha256 of a file)
            resolved["student_init"] = init_identity
        write_run_config(out, resolved)
    return ckpt_data


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint being resumed (they will be logged again).

    A final line that does not parse is a write torn by a killed process: it is dropped. An unparsable
    line anywhere else means the file is corrupt, which is an error."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = []
    for i, ln in enumerate(lines):
        try:
            record = json.loads(ln)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e}); the metrics file is corrupt") from e
        if record["step"] <= step:
            kept.append(ln)
    with write_guard(path, "the metrics file", kept="the checkpoint is kept"):
        path.write_text("".join(ln + "\n" for ln in kept))


def _restore(config: DistillConfig, model: Distiller, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LambdaLR, device: torch.device,
             ckpt: dict[str, Any] | None = None, ada: AdaLoss | None = None) -> TrainState:
    """Load the run's checkpoint (`ckpt`: already read) into model / optimizer / scheduler / RNGs (and the
    AdaLoss averages, `ada`); returns its TrainState."""
    if ckpt is None:
        ckpt = load_checkpoint(checkpoint_path(config.out_dir))
    if config.steps < int(ckpt["step"]):
        raise ValueError(f"cannot resume {config.out_dir} with steps={config.steps}: its checkpoint is "
                         f"already at step {int(ckpt['step'])} (steps may only grow on resume)")
    model.student.load_state_dict(ckpt["student"])
    model.heads.load_state_dict(ckpt["heads"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    # LambdaLR restores its callable's saved (warmup, total), but the schedule must follow the config asked
    # for now: an extended run (more steps) stretches its cosine from the resumed step on. With unchanged
    # steps this recomputes exactly the lr the scheduler had set (bit-exact resume).
    scheduler.lr_lambdas = [WarmupCosine(config.warmup_steps, config.steps) for _ in optimizer.param_groups]
    for group, base_lr, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * fn(scheduler.last_epoch)
    restore_rng_states(ckpt["rng"], device)
    if ada is not None:
        if "adaloss" not in ckpt:
            raise ValueError(f"{checkpoint_path(config.out_dir)} holds no AdaLoss state, which variant "
                             f"{config.norm.value} needs to resume; train the run again from step 0")
        ada.load_state_dict(ckpt["adaloss"])
    return TrainState(step=int(ckpt["step"]), loader=TrainState.loader_from_json(ckpt["loader"]))


def train(config: DistillConfig, *, resume: bool = False, extend: bool = False, stop_at: int | None = None,
          dist_ctx: DistContext | None = None, lease: LeaseOptions | None = None) -> Path:
    """Run (or, with resume, continue) distillation; returns the run directory.

    extend: with resume, allow more steps than the saved run's (see the module docstring).
    stop_at: stop after this step as if interrupted (the schedule still follows config.steps; a
    checkpoint is written there). dist_ctx: this rank's place in an initialized process group.
    Raises TrainingInterrupted after checkpointing when SIGINT / SIGTERM arrives.
    The run directory is written under a lease (stages/distill/run_lease.py): a second run into the same
    directory raises LeaseHeldError naming the first (or waits, with LeaseOptions(wait=True)).
    """
    owner = dist_ctx is None or dist_ctx.is_main
    with kept_only_once_checkpointed(config.out_dir, owner=owner), \
            run_lease(config.out_dir, dist_ctx, lease, purpose=f"distill {config.out_dir.name}") as held:
        return _train(config, resume=resume, extend=extend, stop_at=stop_at, dist_ctx=dist_ctx, lease=held)


def _train(config: DistillConfig, *, resume: bool, extend: bool, stop_at: int | None,
           dist_ctx: DistContext | None, lease: Lease | None) -> Path:
    is_main = dist_ctx is None or dist_ctx.is_main
    if is_main and config.warmup_steps >= config.steps:
        log.warning("warmup_steps=%d >= steps=%d: the learning rate never reaches its peak %g and the cosine "
                    "decay never starts", config.warmup_steps, config.steps, config.lr)
    device = device_for(config, dist_ctx)
    torch.manual_seed(config.seed)
    if is_main:  # rank 0 fits and persists the normalizers first; the others then load them
        stores = StoreSet(config.root, config.teachers, norm=config.norm, summary_loss=config.summary_loss)
    barrier(dist_ctx)
    if not is_main:
        stores = StoreSet(config.root, config.teachers, norm=config.norm, summary_loss=config.summary_loss)
    init = None if resume else resolve_student_weights(  # before anything is written: a missing file stops here
        config.student, config.student_weights, pretrained_name=student_pretrained_name(config.student),
        seed=config.seed)
    ckpt_data = _prepare_run_dir(config, stores, resume=resume, is_main=is_main, extend=extend, student_init=init)
    student, heads = build_models(config, head_targets(stores))
    if init is not None:
        load_student_weights(student, init)
    model = Distiller(student, heads).to(device)
    optimizer, scheduler = make_optimizer(config, model)
    state = TrainState(step=0, loader=tuple(LoaderState() for _ in config.train_partitions))
    ada = AdaLoss() if config.norm.adaptive else None
    if resume:
        state = _restore(config, model, optimizer, scheduler, device, ckpt=ckpt_data, ada=ada)
        if is_main:
            _truncate_metrics(metrics_path(config.out_dir), state.step)
    world = 1 if dist_ctx is None else dist_ctx.world_size
    wrapped: nn.Module = model
    if world > 1:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.torch_compile != "eager":
        wrapped = torch.compile(wrapped, backend=config.torch_compile)
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    stop = _StopFlag()
    if state.step < end:
        datasets = partition_datasets(config, stores, start=state.loader, rank=0 if dist_ctx is None else dist_ctx.rank,
                                      world_size=world, loader_memory=parse_bytes(config.loader_memory))
        if is_main:
            for ds in datasets:
                log.info("%s", ds.views_note)
        loader = make_partition_loader(datasets, num_workers=config.num_workers,
                                       prefetch_factor=config.prefetch_factor, pin_memory=device.type == "cuda")
        with stop:
            _loop(_Loop(config, wrapped, model, optimizer, scheduler, datasets, device, dist_ctx, lease, ada), loader,
                  state, end=end, stop=stop)
    if is_main:
        if lease is not None:
            lease.check()  # never replace the checkpoint of a run directory another run has taken over
        save_checkpoint(checkpoint_path(config.out_dir), student=student, heads=heads, optimizer=optimizer,
                        scheduler=scheduler, state=state, config=config.to_dict(), device=device,
                        adaloss=None if ada is None else ada.state_dict())
        if state.step >= config.steps:
            export_run(config.out_dir)
    if stop.signum is not None:
        raise TrainingInterrupted(config.out_dir, state.step, config.steps, stop.signum)
    barrier(dist_ctx)
    return config.out_dir


def _part_inputs(config: DistillConfig, model: Distiller, batches: list[dict[str, Any]], device: torch.device,
                 normalizers: dict[str, dict[str, Any]], frames: dict[str, np.ndarray] | None
                 ) -> tuple[list[PartInput], list[dict[str, torch.Tensor]]]:
    """Every partition's PartInput and normalized targets (the rows each teacher trains on, when split);
    frames: StoreSet.frames of the run's stores with their own resize rule."""
    inputs, targets = [], []
    windowed_for = getattr(model.student, "windowed_for", None)
    for part, batch in zip(config.train_partitions, batches):
        x_BCHW = student_pixels(batch["image_BHW3"], device=device)
        raw = targets_on_device(batch, device)
        rows = teacher_rows(part.teachers, x_BCHW.shape[0]) if config.teacher_batches == "split" else None
        if rows is not None:
            raw = {k: v[rows[k.split("/")[0]]] for k, v in raw.items()}
        windowed = bool(windowed_for is not None and windowed_for(part.img_size))
        part_frames = {t: f for t, f in (frames or {}).items() if t in part.teachers}
        frames_B = batch_frames(part_frames, batch["image_B"], batch["view_B"], device)
        inputs.append(PartInput(x_BCHW, part.teachers, rows, windowed, frames_B))
        targets.append(normalize_targets(raw, normalizers))
    return inputs, targets


def train_step(config: DistillConfig, wrapped: nn.Module, model: Distiller, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LambdaLR, batch: dict[str, Any] | list[dict[str, Any]], *,
               device: torch.device, normalizers: dict[str, dict[str, Any]], ada: AdaLoss | None = None,
               reduce: Any = None, frames: dict[str, np.ndarray] | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """One optimization step on one batch per resolution partition (a list; a single batch for a run of one
    partition): (loss, per-teacher parts, the lr it used). The loss is the sum of the partitions' losses (a
    store belongs to one partition, so their predictions and targets are one dict each, scored together).

    frames: {teacher: float [N, V, 4]} of the teachers with their own resize rule (StoreSet.frames): the
    batch's views' frames align the predictions and mask padded tokens out of the loss.

    The batch's stored targets (compact dtype, from the loader) are copied to `device`, widened and
    normalized there (`normalize_targets`). parts also holds "grad_norm" (total gradient norm before any
    clip) and "clipped" (1.0 when the clip bound this step, else 0.0). ``ada`` / ``reduce``: the AdaLoss
    state of an adaptive variant and the mean over ranks (``distill_loss``)."""
    batches = batch if isinstance(batch, list) else [batch]
    inputs, targets = _part_inputs(config, model, batches, device, normalizers, frames)
    plain = len(inputs) == 1 and inputs[0].rows is None and not inputs[0].windowed
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if plain:
            preds = [wrapped(inputs[0].x_BCHW, inputs[0].frames) if inputs[0].frames else wrapped(inputs[0].x_BCHW)]
        else:
            preds = wrapped(parts=inputs)
    loss_frames = {t: f for p in inputs for t, f in p.loss_frames().items()}
    loss, parts = distill_loss(config, {t: p for pred in preds for t, p in pred.items()},
                               {k: v for target in targets for k, v in target.items()}, device, ada=ada, reduce=reduce,
                               frames=loss_frames or None)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")  # inf: measure, never clip
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    parts = {**parts, "grad_norm": grad_norm.detach(),
             "clipped": (grad_norm > max_norm).to(grad_norm.dtype).detach()}
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    return loss, parts, lr


@dataclass(frozen=True)
class _Loop:
    """What the optimization loop works with (besides the loader and the mutable TrainState)."""

    config: DistillConfig
    wrapped: nn.Module  # what the forward runs through (the DDP wrapper, or `model` itself)
    model: Distiller
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    datasets: list[StoreBatches]  # one per resolution partition
    device: torch.device
    dist_ctx: DistContext | None
    lease: Lease | None = None  # rank 0's lease on the run directory
    ada: AdaLoss | None = None  # the moving averages of an AdaLoss variant (None for the others)

    @property
    def is_main(self) -> bool:
        return self.dist_ctx is None or self.dist_ctx.is_main

    def checkpoint(self, state: TrainState) -> None:
        if self.lease is not None:
            self.lease.check()
        save_checkpoint(checkpoint_path(self.config.out_dir), student=self.model.student, heads=self.model.heads,
                        optimizer=self.optimizer, scheduler=self.scheduler, state=state,
                        config=self.config.to_dict(), device=self.device,
                        adaloss=None if self.ada is None else self.ada.state_dict())


def _logged_elapsed(path: Path) -> float:
    """Training wall time (s) of the last record of a run's metrics.jsonl (0 when none): a resumed run
    keeps counting from there, so elapsed_s is the run's whole training time."""
    if not path.is_file():
        return 0.0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return float(json.loads(lines[-1]).get("elapsed_s", 0.0)) if lines else 0.0


def _loop(run: _Loop, loader: Any, state: TrainState, *, end: int, stop: _StopFlag | None = None) -> None:
    """Optimization steps state.step+1 .. end; mutates `state`; logs and checkpoints on rank 0."""
    config, dist_ctx = run.config, run.dist_ctx
    world = 1 if dist_ctx is None else dist_ctx.world_size
    metrics_file = metrics_path(config.out_dir)
    # disable=None: no bar when stderr is not a terminal (DVC logs, CI); metrics.jsonl has the numbers.
    bar = tqdm(total=config.steps, initial=state.step, desc="distill", disable=None if run.is_main else True,
               dynamic_ncols=True)
    t_last, images_since, clipped_since, steps_since = time.perf_counter(), 0, 0.0, 0
    t_ckpt = time.monotonic()

    def reduce(values: list[float]) -> list[float]:  # AdaLoss: the same averages on every rank
        return all_reduce_mean(torch.tensor(values, dtype=torch.float64, device=run.device), dist_ctx).tolist()

    elapsed = _logged_elapsed(metrics_file) if run.is_main else 0.0  # training time before this resume
    run.model.train()
    normalizers = {t: n for ds in run.datasets for t, n in ds.stores.normalizers.items()}
    frames = {t: f for ds in run.datasets for t, f in ds.stores.frames.items()}
    for batches in loader:
        loss, parts, lr = train_step(config, run.wrapped, run.model, run.optimizer, run.scheduler,
                                     batches if len(batches) > 1 else batches[0], device=run.device,
                                     normalizers=normalizers, ada=run.ada, reduce=reduce, frames=frames)
        state.step += 1
        state.loader = states_after(run.datasets, batches)
        images_since += sum(b["image_BHW3"].shape[0] for b in batches) * world
        clipped_since += float(parts.pop("clipped"))  # identical on every rank (DDP all-reduces gradients)
        steps_since += 1
        if state.step % config.log_every == 0 or state.step == end:
            names = ["loss", *parts]
            values = all_reduce_mean(torch.stack([loss.detach(), *parts.values()]).float(), dist_ctx).tolist()
            now = time.perf_counter()
            elapsed += now - t_last
            record = {"step": state.step, "lr": lr, **dict(zip(names, values)),
                      "clip_frac": clipped_since / steps_since,
                      "images_per_s": images_since / max(now - t_last, 1e-9), "elapsed_s": elapsed}
            t_last, images_since, clipped_since, steps_since = now, 0, 0.0, 0
            if run.is_main:
                with write_guard(metrics_file, "a metrics line", kept="the last checkpoint is kept (a torn "
                                 "metrics line is dropped on resume)"):
                    with metrics_file.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4g}")
        bar.update(1)
        due = bool(config.ckpt_every) and state.step % config.ckpt_every == 0
        due = due or (config.ckpt_minutes > 0 and time.monotonic() - t_ckpt >= 60.0 * config.ckpt_minutes)
        if run.is_main and due and state.step < end:
            run.checkpoint(state)
            t_ckpt = time.monotonic()
        if state.step >= end or (stop is not None and stop.signum is not None):
            break  # train() writes the final (or interrupted) checkpoint
    bar.close()
