"""The one reader of params.yaml: typed, strict sections, each mapping onto its stage's config.

params.yaml drives the offline sweep of the PHI-S paper (arXiv 2410.01680) over an AM-RADIO
(arXiv 2312.06709) store: corpus → extract (one store per teacher) → distill (one run per normalization
variant) → evaluate → report. DVC declares these keys per stage (dvc.yaml), so changing ``distill.*``
re-runs only stage two; every command takes the file's values as its option defaults
(pipeline/defaults.py).

A section is its stage's config (`corpus:` is `CorpusConfig`, `evaluate:` `EvaluateConfig`, `report:`
`ReportConfig`) or, where the file names a sweep rather than one run (`extract:`, `distill:`), a section
whose defaults are read from the stage config (`ExtractConfig`, `DistillConfig`, `SweepConfig`): a key left
out takes the stage's default, which is spelled only there. `store.root`, `demo.dir`, `corpus.source` and
`extract.teachers` have no default and must be set.

The path is always passed explicitly. Unknown sections or keys, missing sections or required keys and
values of the wrong type raise ``ValueError`` naming the key and the valid choices: a typo never silently
becomes a default. Importing this module imports the stage configs (torch): command modules import it
inside their commands, so `pipeline --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.corpus.config import CorpusConfig
from stages.distill.config import DistillConfig, RecipeParams, SweepConfig
from stages.evaluate.config import EvaluateConfig, ReportConfig
from stages.extract.config import ExtractConfig
from store_schema.codecs import CodecSpec


@dataclass(frozen=True)
class StoreParams:
    """Where the feature store lives (outside DVC outputs; see docs/SCIENCE.md, toolchain notes). No default:
    a params file must set it."""

    root: Path | None = None


@dataclass(frozen=True)
class DemoParams:
    """Where `pipeline demo-corpus` exports the embedded demo images (no default: a params file sets it)."""

    dir: Path | None = None


@dataclass(frozen=True)
class ExtractParams:
    """`extract:`: the teachers of the sweep and how each is extracted. Defaults: `ExtractConfig`'s (and the
    codec's keepbits); storage grids, checkpoints and fidelity images per teacher; `text_teachers`: the
    open_clip teachers whose text embeddings and projection go into their stores (`pipeline extract-text`)."""

    teachers: list[str] = field(default_factory=list)  # no default: a params file must list them
    # views per forward: one size for every teacher, or {teacher: size} (a teacher not named gets
    # ExtractConfig's); out of device memory halves a teacher's size and redoes the shard
    batch_size: int | dict[str, int] = ExtractConfig.batch_size
    shard_size: int = ExtractConfig.shard_size
    keepbits: int = CodecSpec.keepbits
    workers: int = ExtractConfig.workers
    device: str = ExtractConfig.device
    ray_address: str | None = ExtractConfig.ray_address  # None: a local Ray; "auto" or host:port: a cluster
    ray_timeout: float = ExtractConfig.ray_timeout  # seconds the cluster at ray_address has to answer
    storage_grids: dict[str, str] = field(default_factory=dict)  # teacher -> "HxW" pooled grid to store
    checkpoints: dict[str, Path] = field(default_factory=dict)  # teacher -> local weights file
    decode_ahead: int = ExtractConfig.decode_ahead
    cpus_per_worker: float = ExtractConfig.cpus_per_worker
    fidelity_images: int = ExtractConfig.fidelity_images
    text_teachers: list[str] = field(default_factory=list)
    resolutions: dict[str, list[int]] = field(default_factory=dict)  # teacher -> further sides (docs/RECIPE.md)

    def batch_size_for(self, teacher: str) -> int:
        """This teacher's extraction batch size (its entry of a per-teacher mapping, else the one size)."""
        if isinstance(self.batch_size, dict):
            return int(self.batch_size.get(teacher, ExtractConfig.batch_size))
        return int(self.batch_size)


@dataclass(frozen=True)
class DistillParams(RecipeParams):
    """`distill:`: one `DistillConfig` (its defaults) per variant and seed of the `SweepConfig` sweep
    (norms × seeds into runs_dir). ``summary_loss``: "cosine" on raw summaries for every variant (both
    papers) or "variant" (the variant's own); a list (``[cosine, variant]``) makes it a sweep axis too:
    every norm and seed is trained once per summary loss (runs named by ``SweepConfig.run_dir``)."""

    student: str = DistillConfig.student
    norms: list[str] = field(default_factory=lambda: list(SweepConfig.norms))
    runs_dir: Path = SweepConfig.runs_dir
    img_size: int = DistillConfig.img_size
    steps: int = DistillConfig.steps
    batch_size: int = DistillConfig.batch_size
    lr: float = DistillConfig.lr
    warmup_steps: int = DistillConfig.warmup_steps
    seeds: list[int] = field(default_factory=lambda: list(SweepConfig.seeds))
    summary_loss: str | list[str] = DistillConfig.summary_loss
    grad_clip: float = DistillConfig.grad_clip
    device: str = DistillConfig.device
    log_every: int = DistillConfig.log_every
    ckpt_every: int = DistillConfig.ckpt_every
    num_workers: int = DistillConfig.num_workers
    loader_memory: str = DistillConfig.loader_memory
    student_views: str = DistillConfig.student_views
    num_summary_tokens: int | None = DistillConfig.num_summary_tokens


@dataclass(frozen=True)
class Params:
    """All of params.yaml: one section per stage, each with its stage config's defaults."""

    store: StoreParams = field(default_factory=StoreParams)
    demo: DemoParams = field(default_factory=DemoParams)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    extract: ExtractParams = field(default_factory=ExtractParams)
    distill: DistillParams = field(default_factory=DistillParams)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    @property
    def sweep(self) -> SweepConfig:
        d = self.distill
        return SweepConfig(norms=tuple(d.norms), seeds=tuple(d.seeds), runs_dir=d.runs_dir,
                           summary_losses=tuple(self.summary_losses))

    @property
    def summary_losses(self) -> list[str]:
        """distill.summary_loss as a list (a plain string: one summary loss)."""
        sl = self.distill.summary_loss
        return [sl] if isinstance(sl, str) else list(sl)

    def run_dir(self, norm: str, seed: int, summary_loss: str | None = None) -> Path:
        """Run directory of one sweep run (`SweepConfig.run_dir`)."""
        return self.sweep.run_dir(norm, seed, summary_loss)

    def sweep_runs(self) -> list[tuple[str, int, str]]:
        """Every (norm, seed, summary loss) of the sweep, norms outer (the order of dvc.yaml's matrix)."""
        return self.sweep.runs()


def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Validate (and lightly coerce: int → float, str → Path) one value against a field type."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):  # list[X], or tuple[X, ...] written as a YAML list too
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        return origin(_check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
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
        for i, tp_i in enumerate(inner):  # the first type the value fits (int | dict, str | list[str])
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


REQUIRED_KEYS = ("store.root", "demo.dir", "corpus.source")  # and extract.teachers: a non-empty list


def _validate(p: Params, source: str) -> None:
    """Required keys and cross-field checks."""
    for key in REQUIRED_KEYS:
        section, name = key.split(".")
        if getattr(getattr(p, section), name) is None:
            raise ValueError(f"{source}: {key} is not set (it has no default)")
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
    from stages.normalize import SUMMARY_LOSSES, NormVariant
    from stages.students.registry import student_max_summary_tokens
    from stages.teachers.registry import teacher_names

    unknown_teachers = [t for t in p.extract.teachers if t not in teacher_names()]
    if unknown_teachers:
        raise ValueError(f"{source}: unknown extract.teachers {unknown_teachers}; valid teachers: {teacher_names()}")
    stray_batch = sorted(set(sizes) - {""} - set(teacher_names()))  # sizes: {"": size} or {teacher: size}
    if stray_batch:
        raise ValueError(f"{source}: extract.batch_size names unknown teachers {stray_batch}; valid teachers: "
                         f"{teacher_names()}")
    for where, mapping in (("extract.text_teachers", p.extract.text_teachers),
                           ("extract.storage_grids", p.extract.storage_grids),
                           ("extract.checkpoints", p.extract.checkpoints), ("extract.resolutions", p.extract.resolutions)):
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
    p.distill.check_recipe(p.extract.teachers, p.extract.resolutions, source)
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
    losses = p.summary_losses
    if not losses or any(sl not in SUMMARY_LOSSES for sl in losses) or len(set(losses)) != len(losses):
        raise ValueError(f"{source}: distill.summary_loss must be one of {list(SUMMARY_LOSSES)} or a list of them "
                         f"without repeats, got {p.distill.summary_loss!r}")
    try:
        p.evaluate.check()
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def read_params(path: Path) -> Params:
    """Read and validate params.yaml at ``path`` (errors name the file; YAML errors its line and column)."""
    from stages.yaml_file import read_yaml_file

    path = Path(path).absolute()  # messages name the file wherever the command runs
    return parse_params(read_yaml_file(path, what="params file", example="configs/demo.yaml"), source=str(path))
