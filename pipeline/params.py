"""The one reader of params.yaml: typed, strict dataclasses per section.

params.yaml drives the offline sweep of the PHI-S paper (arXiv 2410.01680) over an AM-RADIO
(arXiv 2312.06709) store: corpus → extract (one store per teacher) → distill (one run per normalization
variant) → evaluate → report. DVC declares these keys per stage (dvc.yaml), so changing ``distill.*``
re-runs only stage two; this module turns the same file into typed objects for ``pipeline demo``.

The path is always passed explicitly. Unknown sections or keys, missing sections and values of the
wrong type raise ``ValueError`` naming the key and the valid choices: a typo never silently becomes a
default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class StoreParams:
    """Where the feature store lives (outside DVC outputs; see docs/SCIENCE.md, toolchain notes)."""

    root: Path = Path("data/store")


@dataclass(frozen=True)
class DemoParams:
    """Where `pipeline demo-corpus` exports the embedded demo images."""

    dir: Path = Path("data/demo_corpus")


@dataclass(frozen=True)
class CorpusParams:
    """`pipeline corpus SOURCE --out ROOT ...` options."""

    source: Path = Path("data/demo_corpus/images")
    views: int = 2
    view_seed: int = 0
    val_fraction: float = 0.2
    min_side: int = 16


DEFAULT_BATCH_SIZE = 32  # extraction views per forward for a teacher extract.batch_size does not name


@dataclass(frozen=True)
class ExtractParams:
    """`pipeline extract` options, shared by every teacher's stage."""

    teachers: list[str] = field(default_factory=lambda: ["tiny_dinov2", "tiny_clip", "tiny_sam"])
    # views per forward: one size for every teacher, or {teacher: size} (a teacher not named gets
    # DEFAULT_BATCH_SIZE); out of device memory halves a teacher's size and redoes the shard
    batch_size: int | dict[str, int] = 32
    shard_size: int = 32
    keepbits: int = 7
    workers: int = 1
    device: str = "cpu"
    ray_address: str | None = None  # None: a local Ray sized to this machine; "auto" or host:port: a cluster
    storage_grids: dict[str, str] = field(default_factory=dict)  # teacher -> "HxW" pooled grid to store
    checkpoints: dict[str, Path] = field(default_factory=dict)  # teacher -> local weights file
    decode_ahead: int = 0  # images a worker decodes ahead on its CPU threads (overlaps a GPU forward)
    cpus_per_worker: float = 1.0  # CPUs Ray grants each actor; its decode / codec threads (docs/STAGE_ONE.md)
    fidelity_images: int = 16  # train images the storage-fidelity check runs the teacher on (0: skip it)
    # open_clip teachers whose text embeddings (evaluate.*_classes prompt sets) and image-side projection
    # `pipeline extract-text-stage` writes into their stores (zero-shot / open-vocabulary evaluation)
    text_teachers: list[str] = field(default_factory=list)

    def batch_size_for(self, teacher: str) -> int:
        """This teacher's extraction batch size (its entry of a per-teacher mapping, else the one size)."""
        if isinstance(self.batch_size, dict):
            return int(self.batch_size.get(teacher, DEFAULT_BATCH_SIZE))
        return int(self.batch_size)


@dataclass(frozen=True)
class DistillParams:
    """`pipeline distill` options; the sweep is ``norms`` × ``seeds`` (one run per variant and seed; the
    report shows mean ± std over seeds). ``summary_loss``: "cosine" on raw summaries for every variant
    (both papers) or "variant" (the variant's own). ``grad_clip``: 0 = off (the same optimizer for every
    variant)."""

    student: str = "vit_tiny_test"
    norms: list[str] = field(default_factory=lambda: ["phis", "mse", "standardize", "zca"])
    runs_dir: Path = Path("runs")
    img_size: int = 64
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 20
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    summary_loss: str = "cosine"
    grad_clip: float = 0.0
    device: str = "cpu"
    log_every: int = 10
    ckpt_every: int = 0  # checkpoint every this many steps (0: only at the end); what a killed run resumes from
    num_workers: int = 0  # DataLoader worker processes (0: load in the main process)
    loader_memory: str = "8GiB"  # decoded store units one rank's loader may hold (all workers), e.g. 32GiB
    student_views: str = "auto"  # auto / store / decode: read <root>/student_views/<img_size>px.zarr or decode
    num_summary_tokens: int | None = None  # student K; None: automatic (one per teacher with a summary)


@dataclass(frozen=True)
class EvaluateParams:
    """`pipeline evaluate RUN` options (kNN protocol of the papers: cosine, τ = 0.07, k = 20)."""

    split: str = "val"
    batch_size: int = 32
    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_labels: Path = Path("data/demo_corpus/probe_labels.csv")
    # Downstream evaluation (null: skipped). Class files: one class per line (label<TAB>prompt name allowed).
    zeroshot_classes: Path | None = None  # classes of probe_labels for zero-shot through the text tower
    zeroshot_templates: str = "imagenet"  # shipped template set (imagenet, segmentation, simple) or a file
    seg_masks: Path | None = None  # PNG label masks named <image uri without suffix>.png
    seg_classes: Path | None = None  # line k = mask value k; 255 = ignore
    seg_templates: str = "segmentation"
    seg_probe_steps: int = 100  # full-batch AdamW steps of the linear segmentation probe


@dataclass(frozen=True)
class ReportParams:
    """`pipeline report RUNS... --out DIR` options."""

    out: Path = Path("reports/sweep")


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    store: StoreParams
    demo: DemoParams
    corpus: CorpusParams
    extract: ExtractParams
    distill: DistillParams
    evaluate: EvaluateParams
    report: ReportParams

    def run_dir(self, norm: str, seed: int) -> Path:
        """Run directory of one sweep variant and seed: <distill.runs_dir>/<norm>-seed<seed>."""
        return self.distill.runs_dir / f"{norm}-seed{seed}"

    def sweep_runs(self) -> list[tuple[str, int]]:
        """Every (norm, seed) of the sweep, norms outer (the order DVC's matrix and `pipeline demo` use)."""
        return [(n, s) for n in self.distill.norms for s in self.distill.seeds]


def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Validate (and lightly coerce: int → float, str → Path) one value against a field type."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        return [_check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {type(value).__name__} {value!r}")
        return {_check_value(k, key_tp, f"{where} key"): _check_value(v, val_tp, f"{where}.{k}")
                for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for i, tp_i in enumerate(inner):  # the first type the value fits (int | dict: a size or a mapping)
            try:
                return _check_value(value, tp_i, where)
            except ValueError:
                if i == len(inner) - 1:
                    raise
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where} must be a non-empty path string, got {value!r}")
        if "://" in value:  # an fsspec URL (s3://bucket/prefix): a Path would collapse the "//"
            if where != "store.root":
                raise ValueError(f"{where}: only store.root may be a URL, got {value!r}")
            return value.rstrip("/")
        return Path(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string: accept numeric text
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ValueError(f"{where} must be {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise AssertionError(f"unsupported params field type {tp} at {where}")


def _section(cls: type, raw: Any, name: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"params section {name!r} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in params section {name!r}; valid keys: {valid}")
    return cls(**{k: _check_value(v, hints[k], f"{name}.{k}") for k, v in raw.items()})


def parse_params(raw: Any, *, source: str = "params") -> Params:
    """Typed Params from an already-parsed YAML mapping (every section required, keys optional)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: top level must be a mapping of sections")
    hints = typing.get_type_hints(Params)
    valid = [f.name for f in dataclasses.fields(Params)]
    unknown, missing = sorted(set(raw) - set(valid)), [s for s in valid if s not in raw]
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; valid sections: {valid}")
    if missing:
        raise ValueError(f"{source}: missing section(s) {missing}")
    params = Params(**{s: _section(hints[s], raw[s], s) for s in valid})
    _validate(params, source)
    return params


def _validate(p: Params, source: str) -> None:
    """Cross-field checks that need no imports of the heavy stages."""
    sizes = p.extract.batch_size if isinstance(p.extract.batch_size, dict) else {"": p.extract.batch_size}
    for where, value in (("corpus.views", p.corpus.views),
                         *((f"extract.batch_size{'.' + t if t else ''}", b) for t, b in sizes.items()),
                         ("extract.shard_size", p.extract.shard_size), ("distill.steps", p.distill.steps),
                         ("distill.batch_size", p.distill.batch_size), ("evaluate.knn_k", p.evaluate.knn_k),
                         ("evaluate.seg_probe_steps", p.evaluate.seg_probe_steps)):
        if value < 1:
            raise ValueError(f"{source}: {where} must be >= 1, got {value}")
    for where, value in (("distill.ckpt_every", p.distill.ckpt_every), ("distill.num_workers", p.distill.num_workers)):
        if value < 0:
            raise ValueError(f"{source}: {where} must be >= 0, got {value}")
    k = p.distill.num_summary_tokens
    if k is not None and k < 1:
        raise ValueError(f"{source}: distill.num_summary_tokens must be >= 1 or null (automatic), got {k}")
    for where, names in (("extract.teachers", p.extract.teachers), ("distill.norms", p.distill.norms),
                         ("distill.seeds", p.distill.seeds)):
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{source}: {where} must be a non-empty list without repeats, got {names}")
    from stages.normalize import NormVariant
    from stages.students.registry import student_max_summary_tokens
    from stages.teachers.registry import teacher_names

    unknown_teachers = [t for t in p.extract.teachers if t not in teacher_names()]
    if unknown_teachers:
        raise ValueError(f"{source}: unknown extract.teachers {unknown_teachers}; valid teachers: {teacher_names()}")
    if isinstance(p.extract.batch_size, dict):
        stray_batch = sorted(set(p.extract.batch_size) - set(teacher_names()))
        if stray_batch:
            raise ValueError(f"{source}: extract.batch_size names unknown teachers {stray_batch}; valid teachers: "
                             f"{teacher_names()}")
    stray_text = sorted(set(p.extract.text_teachers) - set(p.extract.teachers))
    if stray_text:
        raise ValueError(f"{source}: extract.text_teachers names {stray_text}, which are not in extract.teachers "
                         f"{p.extract.teachers}")
    for where, mapping in (("extract.storage_grids", p.extract.storage_grids),
                           ("extract.checkpoints", p.extract.checkpoints)):
        stray = sorted(set(mapping) - set(p.extract.teachers))
        if stray:
            raise ValueError(f"{source}: {where} names {stray}, which are not in extract.teachers {p.extract.teachers}")
    try:
        cap = student_max_summary_tokens(p.distill.student)  # also validates the name
    except ValueError as e:
        raise ValueError(f"{source}: distill.student: {e}") from None
    if k is not None and cap is not None and k > cap:
        raise ValueError(f"{source}: distill.num_summary_tokens {k} exceeds what student {p.distill.student!r} "
                         f"supports ({cap}); use null (automatic)")

    valid_norms = [v.value for v in NormVariant]
    bad = [n for n in p.distill.norms if n not in valid_norms]
    if bad:
        raise ValueError(f"{source}: unknown distill.norms {bad}; valid variants: {valid_norms}")
    if any(s < 0 for s in p.distill.seeds):
        raise ValueError(f"{source}: distill.seeds must be integers >= 0, got {p.distill.seeds}")
    if p.distill.grad_clip < 0:
        raise ValueError(f"{source}: distill.grad_clip must be >= 0 (0: off), got {p.distill.grad_clip}")
    if p.extract.fidelity_images < 0:
        raise ValueError(f"{source}: extract.fidelity_images must be >= 0 (0: skip), got {p.extract.fidelity_images}")
    from stages.normalize import SUMMARY_LOSSES

    if p.distill.summary_loss not in SUMMARY_LOSSES:
        raise ValueError(f"{source}: distill.summary_loss must be one of {list(SUMMARY_LOSSES)}, got "
                         f"{p.distill.summary_loss!r}")
    if p.evaluate.split not in ("train", "val"):
        raise ValueError(f"{source}: evaluate.split must be 'train' or 'val', got {p.evaluate.split!r}")


def read_params(path: Path) -> Params:
    """Read and validate params.yaml at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no params file at {path}")
    return parse_params(yaml.safe_load(path.read_text()), source=str(path))
