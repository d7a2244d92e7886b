"""Typed configuration of one stage-two run (store-fed agglomerative distillation, AM-RADIO arXiv
2312.06709, with the target normalizations of PHI-S arXiv 2410.01680).

`DistillConfig` is the boundary object: `pipeline/cmd_distill.py` resolves CLI options / params.yaml
into one, and everything in `stages/distill` reads only the fields it needs. It round-trips through
JSON (`to_dict` / `from_dict`) so a run directory's `config.json` rebuilds the exact run.

Resuming a run (`train(resume=True)`, `pipeline distill --sweep`, `pipeline demo`) accepts a config that
differs from the saved one only in RESUMABLE_FIELDS: fields that change how often or where a run is
computed, never what it computes. `steps` is listed there but guarded separately (stages/distill/train.py):
a run of N steps is trained on an N-step schedule, so a resume with other steps is refused unless the user
asks to extend the run explicitly (`extend=True`, `pipeline distill --extend`), which records the
extension and the schedule's shape in config.json. The others are logging / checkpoint cadence,
loader parallelism, the device (bf16 autocast on CUDA, so bit-exactness across devices is not promised)
the run directory's own path (a moved run) and the store root's spelling (what the stores hold is
checked separately: the run's config.json records each store's fingerprint, and a resume refuses stores
whose targets changed). Every other difference (norm, lr, seed, student, ...) would silently mix two
experiments in one checkpoint and is refused by `check_resumable`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from store_schema.location import as_location
from typing import Any

from stages.distill.partitions import Partition, resolve_partitions
from stages.normalize import NormVariant, parse_summary_loss
from stages.students.contract import StudentOptions

STUDENT_VIEW_MODES = ("auto", "store", "decode")
TEACHER_BATCHES = ("shared", "split")  # every teacher's loss on every image / each teacher its own rows (PHI-S)
COMPILE_MODES = ("eager", "inductor", "aot_eager")  # eager: no torch.compile; else its backend


def check_student_views(mode: str) -> str:
    if mode not in STUDENT_VIEW_MODES:
        raise ValueError(f"unknown student_views {mode!r}; valid: {', '.join(STUDENT_VIEW_MODES)}")
    return mode


RESUMABLE_FIELDS: frozenset[str] = frozenset(
    {"steps", "log_every", "ckpt_every", "ckpt_minutes", "num_workers", "prefetch_factor", "device", "out_dir", "root",
     "loader_memory", "student_views", "grad_checkpointing", "torch_compile"})

_BYTE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """'8GiB', '512 MiB', '2GB', '1000000' -> bytes; ValueError naming the accepted units otherwise."""
    if isinstance(text, int):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if m is None or m.group(2).lower() not in _BYTE_UNITS:
            raise ValueError(f"cannot read {text!r} as a size in bytes; write e.g. 8GiB, 512MiB, 2GB or a plain "
                             f"number of bytes (units: {', '.join(u for u in _BYTE_UNITS if u)}, case-insensitive)")
        value, unit = float(m.group(1)), m.group(2).lower()
    n = int(value * _BYTE_UNITS[unit])
    if n < 1:
        raise ValueError(f"a size in bytes must be positive, got {text!r}")
    return n


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Everything one distillation run needs.

    batch_size is per data-parallel rank: the global batch is batch_size × world size.
    teacher_weights maps a teacher name to its loss weight (missing teachers weigh 1.0).
    ckpt_every = 0 writes no step-cadence checkpoints; ckpt_minutes (0: off) writes one whenever that much
    wall time passed since the last, and an interrupted run (SIGINT / SIGTERM) writes one before it stops.
    shuffle_block is the number of shards whose
    samples are shuffled together (see stages/distill/loader.py); loader_memory bounds the decoded
    units one rank's loader holds ("8GiB", "512MiB", ...; resumable). student_views: where the student's
    views come from, "auto" / "store" / "decode" (stages/distill/view_source.py; the same pixels either
    way, so resumable). num_summary_tokens: the student's K
    (None: automatic, `train.summary_tokens_for`: one per teacher with a summary, as AM-RADIO gives a ViT
    one CLS token per summary teacher, capped by the student family, i.e. 1 for E-RADIO).
    summary_loss: "cosine" (default: 1 − cos on raw summaries for every variant, AM-RADIO; the PHI-S
    variants are feature losses) or "variant" (the variant's normalization and loss on summaries too).
    grad_clip: gradient-norm clip (0, the default: off). A fixed clip binds on a different share of
    steps for each variant (targets of very different scales), i.e. gives each variant another
    optimizer; the share of clipped steps is logged (``clip_frac`` in metrics.jsonl) either way.
    partitions: resolution partitions (stages/distill/partitions.py); empty: one, (img_size, batch_size,
    teachers) (`train_partitions`; config.json lists it too). With partitions, teachers / img_size /
    batch_size are derived: the partitions' store keys, and the first partition's side and batch (the side
    the student is built at), whatever was passed for them.
    student_weights: "random", "pretrained" (timm weights from the hub cache) or a weights file
    (stages/students/weights.py). cpe_grid / window_size / window_global_every / window_min_size /
    grad_checkpointing: the ViT student's options (stages/students/contract.py StudentOptions).
    torch_compile: "eager" (no compile), or a torch.compile backend the training model runs under ("inductor",
    "aot_eager"). grad_checkpointing and torch_compile change how a step is computed (memory, speed,
    float rounding), never what: both may change on resume. teacher_batches: "shared" (every teacher's
    loss on every image of its partition's batch) or "split" (PHI-S: each teacher of a partition gets its
    own contiguous share of the batch's rows).
    """

    student: str = "vit_tiny_test"
    teachers: tuple[str, ...]
    root: Path
    out_dir: Path
    norm: NormVariant = NormVariant.PHIS
    summary_loss: str = "cosine"
    img_size: int = 224
    num_summary_tokens: int | None = None
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    teacher_weights: dict[str, float] = field(default_factory=dict)
    summary_weight: float = 1.0
    feature_weight: float = 1.0
    grad_clip: float = 0.0
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 0
    prefetch_factor: int = 2
    shuffle_block: int = 4
    loader_memory: str = "8GiB"
    student_views: str = "auto"
    log_every: int = 10
    ckpt_every: int = 0
    ckpt_minutes: float = 10.0
    partitions: tuple[Partition, ...] = ()
    student_weights: str = "random"
    cpe_grid: int = 0
    window_size: int = 0
    window_global_every: int = 4
    window_min_size: int = 0
    grad_checkpointing: bool = False
    torch_compile: str = "eager"
    teacher_batches: str = "shared"

    def __post_init__(self) -> None:
        given = tuple(Partition.coerce(p) for p in self.partitions)
        if len(given) == 1 and (given[0].img_size, given[0].batch_size, given[0].teachers) == (
                self.img_size, self.batch_size, tuple(self.teachers)):
            given = ()  # the one partition a run without partitions has (as config.json records it)
        parts, teachers = resolve_partitions(given, img_size=self.img_size, batch_size=self.batch_size,
                                             teachers=tuple(self.teachers))
        object.__setattr__(self, "partitions", given)
        object.__setattr__(self, "teachers", teachers)
        object.__setattr__(self, "img_size", parts[0].img_size)
        object.__setattr__(self, "batch_size", parts[0].batch_size)
        self.student_options  # validates the student options
        for name, value, valid in (("teacher_batches", self.teacher_batches, TEACHER_BATCHES),
                                   ("torch_compile", self.torch_compile, COMPILE_MODES)):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if not isinstance(self.student_weights, str) or not self.student_weights.strip():
            raise ValueError(f"student_weights must be 'random', 'pretrained' or a weights file, got "
                             f"{self.student_weights!r}")
        if self.teacher_batches == "split":
            short = [p for p in parts if p.batch_size < len(p.teachers)]
            if short:
                raise ValueError(f"teacher_batches split gives each teacher its own rows of the batch: partition(s) "
                                 f"{[p.to_dict() for p in short]} have fewer rows than teachers")
        object.__setattr__(self, "root", as_location(self.root))  # a folder, or an fsspec URL (str)
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "norm", NormVariant.parse(self.norm))
        parse_summary_loss(self.summary_loss)
        object.__setattr__(self, "teacher_weights", {k: float(v) for k, v in self.teacher_weights.items()})
        if not self.teachers:
            raise ValueError("at least one teacher is required")
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"teachers listed twice: {list(self.teachers)}")
        unknown = sorted(set(self.teacher_weights) - set(self.teachers))
        if unknown:
            raise ValueError(f"teacher_weights names {unknown}, which are not among the selected teachers "
                             f"{list(self.teachers)}")
        for name in ("steps", "batch_size", "img_size", "shuffle_block", "log_every", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_workers", "ckpt_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.ckpt_minutes < 0:
            raise ValueError(f"ckpt_minutes must be >= 0 (0: off), got {self.ckpt_minutes}")
        if self.num_summary_tokens is not None and self.num_summary_tokens < 1:
            raise ValueError(f"num_summary_tokens must be >= 1 (or None: automatic), got {self.num_summary_tokens}")
        parse_bytes(self.loader_memory)
        check_student_views(self.student_views)
        if self.lr <= 0 or self.grad_clip < 0:
            raise ValueError(f"lr must be > 0 and grad_clip >= 0, got lr={self.lr}, grad_clip={self.grad_clip}")

    def teacher_weight(self, teacher: str) -> float:
        return self.teacher_weights.get(teacher, 1.0)

    @property
    def train_partitions(self) -> tuple[Partition, ...]:
        """The partitions a step trains: the given ones, or the one (img_size, batch_size, teachers)."""
        return self.partitions or (Partition(self.img_size, self.batch_size, self.teachers),)

    @property
    def student_options(self) -> StudentOptions:
        """The student trunk's build options (stages/students/build.py reads them)."""
        return StudentOptions(cpe_grid=self.cpe_grid, window_size=self.window_size,
                              window_global_every=self.window_global_every, window_min_size=self.window_min_size,
                              grad_checkpointing=self.grad_checkpointing)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, the variant by its CLI name)."""
        d = dataclasses.asdict(self)
        d["teachers"] = list(self.teachers)
        d["partitions"] = [p.to_dict() for p in self.train_partitions]
        d["root"], d["out_dir"] = str(self.root), str(self.out_dir)
        d["norm"] = self.norm.value
        return d

    def resume_conflicts(self, other: "DistillConfig") -> list[str]:
        """Sorted names of the fields in which `other` (the config asked for now) differs from this one
        (the saved run's) and which a resume may not change (all fields but RESUMABLE_FIELDS)."""
        mine, theirs = self.to_dict(), other.to_dict()
        implied = set() if (self.partitions or other.partitions) else {"partitions"}  # named by its own fields
        return sorted(k for k in mine if k not in RESUMABLE_FIELDS | implied and mine[k] != theirs[k])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        """Inverse of to_dict; keys that are not fields (e.g. manifest_hash in config.json) are ignored.

        A config.json written before summary_loss existed trained summaries with the variant's own
        loss: it reads back as summary_loss "variant"."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"summary_loss": "variant", **{k: v for k, v in d.items() if k in names}})


@dataclass(frozen=True)
class SweepConfig:
    """The normalization sweep (PHI-S, arXiv 2410.01680) around one DistillConfig: every variant of `norms`
    trained once per seed of `seeds` into <runs_dir>/<norm>-seed<seed>; the report shows mean ± std over
    seeds. The first norm and seed are DistillConfig's defaults (a single run is the sweep's first).
    `summary_losses` is a third axis (the paper does not say which summary loss it used): with more than one,
    every norm and seed is trained once per summary loss into <runs_dir>/<norm>-<summary loss>-seed<seed>."""

    norms: tuple[str, ...] = (NormVariant.PHIS.value, NormVariant.MSE.value, NormVariant.STANDARDIZE.value,
                              NormVariant.ZCA.value)
    seeds: tuple[int, ...] = (0, 1)
    runs_dir: Path = Path("runs")
    summary_losses: tuple[str, ...] = (DistillConfig.summary_loss,)

    def run_dir(self, norm: str, seed: int, summary_loss: str | None = None) -> Path:
        """Run directory of one variant and seed: <runs_dir>/<norm>-seed<seed>; with several summary losses,
        <runs_dir>/<norm>-<summary loss>-seed<seed> (`summary_loss` one of them)."""
        if len(self.summary_losses) == 1:
            if summary_loss not in (None, self.summary_losses[0]):
                raise ValueError(f"summary loss {summary_loss!r} is not the sweep's ({self.summary_losses[0]!r})")
            return Path(self.runs_dir) / f"{norm}-seed{seed}"
        if summary_loss not in self.summary_losses:
            raise ValueError(f"summary loss {summary_loss!r} is not in distill.summary_loss {list(self.summary_losses)}")
        return Path(self.runs_dir) / f"{norm}-{summary_loss}-seed{seed}"

    def runs(self) -> list[tuple[str, int, str]]:
        """Every (norm, seed, summary loss), norms outer (the order of dvc.yaml's matrix)."""
        return [(n, s, sl) for n in self.norms for s in self.seeds for sl in self.summary_losses]


def check_resumable(saved: DistillConfig, requested: DistillConfig, *, run_dir: Path) -> None:
    """Raise ValueError naming every field (saved vs requested value) that forbids resuming `run_dir`."""
    conflicts = saved.resume_conflicts(requested)
    if conflicts:
        mine, theirs = saved.to_dict(), requested.to_dict()
        detail = "; ".join(f"{k}: saved {mine[k]!r}, requested {theirs[k]!r}" for k in conflicts)
        raise ValueError(f"cannot resume {run_dir} with a different config ({detail}); only "
                         f"{sorted(RESUMABLE_FIELDS)} may change on resume. Delete the run or choose another "
                         f"run directory")


@dataclass(frozen=True)
class RecipeParams:
    """params.yaml's `distill:` keys of the papers' student recipe (docs/RECIPE.md), with DistillConfig's
    defaults: resolution partitions "SIZE:BATCH:store,store", student initialization and options.
    pipeline/params.py's DistillParams inherits them."""

    partitions: tuple[str, ...] = DistillConfig.partitions
    student_weights: str = DistillConfig.student_weights
    cpe_grid: int = DistillConfig.cpe_grid
    window_size: int = DistillConfig.window_size
    window_global_every: int = DistillConfig.window_global_every
    window_min_size: int = DistillConfig.window_min_size
    grad_checkpointing: bool = DistillConfig.grad_checkpointing
    torch_compile: str = DistillConfig.torch_compile
    teacher_batches: str = DistillConfig.teacher_batches

    def check_recipe(self, teachers: list[str], resolutions: dict[str, list[int]], source: str) -> None:
        """ValueError (prefixed with `source`, the params file) unless the partitions name extracted stores
        (extract.teachers, and <teacher>@<side> of extract.resolutions) and the options are valid."""
        from stages.distill.partitions import check_partition_stores

        try:
            check_partition_stores(self.partitions, teachers, resolutions)
            for name, valid in (("teacher_batches", TEACHER_BATCHES), ("torch_compile", COMPILE_MODES)):
                if getattr(self, name) not in valid:
                    raise ValueError(f"distill.{name} must be one of {list(valid)}, got {getattr(self, name)!r}")
            for name in ("cpe_grid", "window_size", "window_global_every", "window_min_size"):
                if getattr(self, name) < 0:
                    raise ValueError(f"distill.{name} must be >= 0 (0: off), got {getattr(self, name)}")
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
