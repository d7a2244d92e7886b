"""Evaluate a run on evaluation datasets in their released layouts (`pipeline evaluate RUN --on ROOT`).

The benchmarks PHI-S (arXiv 2410.01680, Table 1) ranks students on, at the papers' protocol and scale
(AM-RADIO arXiv 2312.06709 for classification and segmentation; Probe 3D, El Banani et al. CVPR 2024,
for depth and normals). A dataset root is built with `pipeline corpus SRC --out ROOT --layout ...`; what
it supports follows from its layout:

| layout | probes | metrics under ``bench/<dataset>/`` |
|---|---|---|
| imagefolder | ``knn`` (cosine, τ = 0.07, k = 20, on the concatenated student summary tokens; train split = bank, val = queries), ``zeroshot`` (per CLIP teacher: the student's adaptor vs the teacher's stored text embeddings of the class names), ``linear`` (mini-batch linear classifier) | ``knn_acc``, ``zeroshot/<teacher>/top1``, ``linear_acc`` |
| ade20k, voc | ``seg`` (BatchNorm + 1×1 conv on the student's backbone features, mini-batches of random crops, whole-image inference at full mask resolution, mIoU with ignore 255) | ``seg/miou`` |
| depth | ``depth`` (AbsRel, δ < 1.25), ``normals`` (mean angular error, % within 11.25°) | ``depth/abs_rel``, ``depth/delta1``, ``normals/mean_angle_deg``, ``normals/within_11_25`` |

The student's features come from the run's feature cache (``stages.evaluate.feature_cache``); teacher
references (the same probes on each teacher's stored outputs over the dataset, ``pipeline extract --root
ROOT``) are computed once per dataset and cached in ``<root>/bench/references.json``, keyed by the teacher
store's fingerprint and the probe settings, so later runs reuse them (``teacher_refs/<teacher>/...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from stages.evaluate.bench_targets import full_target
from stages.evaluate.dense_probe import ProbeConfig, score_dense_probe, train_dense_probe
from stages.evaluate.feature_cache import Preloaded, Rows
from stages.evaluate.knn import knn_accuracy
from stages.evaluate.linear_classifier import linear_classifier_accuracy, train_linear_classifier
from stages.evaluate.zeroshot import zeroshot_predict
from store_schema import layout
from store_schema.errors import StoreNotFoundError
from store_schema.manifest import Manifest, read_manifest

PROBE_RECIPE = 1  # bump when the probes' training changes their scores: cached teacher references are redone
PROBES: tuple[str, ...] = ("knn", "zeroshot", "linear", "seg", "depth", "normals")
LAYOUT_PROBES: dict[str, tuple[str, ...]] = {"imagefolder": ("knn", "zeroshot", "linear"), "ade20k": ("seg",),
                                             "voc": ("seg",), "depth": ("depth", "normals")}
PROBE_NEEDS = {"knn": "class labels", "zeroshot": "class labels", "linear": "class labels",
               "seg": "segmentation masks", "depth": "depth maps", "normals": "depth maps or surface normals"}


@dataclass(frozen=True)
class BenchConfig:
    """How `pipeline evaluate --on` evaluates; probes None = every probe the dataset's layout supports."""

    probes: tuple[str, ...] | None = None
    knn_k: int = 20
    knn_temperature: float = 0.07
    dense: ProbeConfig = field(default_factory=ProbeConfig)
    linear: ProbeConfig = field(default_factory=lambda: ProbeConfig(iterations=1000, batch_size=256))
    target_side: int = 128
    zeroshot_templates: str = "imagenet"
    batch_size: int = 32
    memory_budget_mb: int = 1024  # a probe's features are held in memory when they fit, else streamed per batch

    def __post_init__(self) -> None:
        unknown = sorted(set(self.probes or ()) - set(PROBES))
        if unknown:
            raise ValueError(f"unknown probe(s) {unknown}; valid probes: {', '.join(PROBES)}")
        if self.target_side < 1:
            raise ValueError(f"target side must be >= 1, got {self.target_side}")
        if self.memory_budget_mb < 0:
            raise ValueError(f"probe memory budget must be >= 0 MiB, got {self.memory_budget_mb}")

    def key(self, probe: str) -> dict[str, Any]:
        """The settings a probe's score depends on (keys the teacher reference cache)."""
        if probe == "knn":
            return {"k": self.knn_k, "temperature": self.knn_temperature}
        if probe == "zeroshot":
            return {"templates": self.zeroshot_templates}
        if probe == "linear":
            return {**self.linear.to_dict(), "recipe": PROBE_RECIPE}
        return {**self.dense.to_dict(), "target_side": self.target_side, "recipe": PROBE_RECIPE}


def dataset_manifest(root: Any) -> Manifest:
    """An evaluation dataset root's manifest; a root without one is named with how to build it."""
    try:
        return read_manifest(layout.manifest_path(root))
    except StoreNotFoundError as e:
        raise StoreNotFoundError(
            f"{e}: no evaluation dataset at {root}; build it with `pipeline corpus SRC --out {root} --layout "
            "imagefolder|ade20k|voc|depth` (a params.yaml names its datasets in evaluate.bench_datasets: "
            "`{}` for none)") from e


def check_bench_roots(roots: list[Any], probes: tuple[str, ...] | None) -> dict[str, Any]:
    """{dataset name: root} of `--on` roots, each checked (manifest, probes, a name of its own) before any work."""
    names: dict[str, Any] = {}
    for r in roots:
        m = dataset_manifest(r)
        check_probes(m, r, probes)
        if m.dataset.name in names:
            raise ValueError(f"{r} and {names[m.dataset.name]} are both dataset {m.dataset.name!r} (metrics go under "
                             "bench/<dataset>): give each dataset root its own folder name")
        names[m.dataset.name] = r
    return names


def check_probes(manifest: Manifest, root: Any, probes: tuple[str, ...] | None) -> tuple[str, ...]:
    """The probes to run on a dataset root; refuses a probe the dataset has no labels / targets for."""
    if manifest.dataset is None:
        asked = probes or PROBES
        raise ValueError(f"{root} is an unlabeled corpus (its manifest was built without --layout): the "
                         f"{', '.join(asked)} probe{'s' if len(asked) > 1 else ''} need "
                         f"{' / '.join(sorted({PROBE_NEEDS[p] for p in asked}))}; build an evaluation dataset with "
                         "`pipeline corpus SRC --out ROOT --layout imagefolder|ade20k|voc|depth`")
    supported = LAYOUT_PROBES[manifest.dataset.layout]
    for p in probes or ():
        if p not in supported:
            raise ValueError(f"the {p} probe needs {PROBE_NEEDS[p]}: {root} ({manifest.dataset.layout} layout) has "
                             f"none; probes this dataset supports: {', '.join(supported)}")
    chosen = tuple(p for p in supported if probes is None or p in probes)
    if "knn" in chosen or "linear" in chosen or "zeroshot" in chosen:
        for split in ("train", "val"):
            if not _labeled(manifest, split).size:
                raise ValueError(f"the {chosen[0]} probe needs labeled {split} images: {root} has none that are ok")
    return chosen


def _labeled(manifest: Manifest, split: str) -> np.ndarray:
    return np.array([i for i in manifest.split_ids(split) if manifest.labels[i]], np.int64)


def _split_ids(manifest: Manifest, split: str, valid: np.ndarray | None = None) -> np.ndarray:
    ids = manifest.split_ids(split)
    return ids if valid is None else ids[valid[ids]]


def class_index(manifest: Manifest) -> np.ndarray:
    """Class id per image (-1 without a label)."""
    index = {c: k for k, c in enumerate(manifest.dataset.classes)}
    return np.array([index.get(lab, -1) for lab in manifest.labels], np.int64)


def classification_scores(probes: tuple[str, ...], manifest: Manifest, summary: Callable, width: int,
                    cfg: BenchConfig, zeroshot: dict[str, tuple[Callable, np.ndarray]]) -> dict[str, Any]:
    """kNN / linear / zero-shot scores of one feature source (student or a teacher)."""
    y_N = class_index(manifest)
    train, val = _labeled(manifest, "train"), _labeled(manifest, "val")
    summary = Preloaded(summary, np.concatenate([train, val]), budget_bytes=cfg.memory_budget_mb << 20)
    out: dict[str, Any] = {}
    if "knn" in probes:
        out["knn_acc"] = knn_accuracy(Rows(summary, train, width), y_N[train], summary(val), y_N[val],
                                      k=cfg.knn_k, temperature=cfg.knn_temperature)
    if "linear" in probes:
        head = train_linear_classifier(summary, train, y_N, width=width, num_classes=len(manifest.dataset.classes),
                                       cfg=cfg.linear)
        out["linear_acc"] = linear_classifier_accuracy(head, summary, val, y_N)
    for teacher, (read, text_LC) in zeroshot.items():
        pred = np.concatenate([zeroshot_predict(read(val[lo : lo + 4096]), text_LC)
                               for lo in range(0, len(val), 4096)])
        out.setdefault("zeroshot", {})[teacher] = {"top1": float(np.mean(pred == y_N[val]))}
    return out


def dense_scores(probes: tuple[str, ...], manifest: Manifest, targets: Any, features: Callable,
           grid: tuple[int, int], channels: int, cfg: BenchConfig) -> dict[str, Any]:
    """Scores of the dense probes on one feature source."""
    out: dict[str, Any] = {}
    L = len(manifest.dataset.classes) or None
    train, val = _split_ids(manifest, "train"), _split_ids(manifest, "val")
    budget = cfg.memory_budget_mb << 20
    features = Preloaded(features, np.concatenate([train, val]), budget_bytes=budget)
    for task in probes:
        task_targets = Preloaded(lambda ids, t=task: targets.read(t, ids), train, budget_bytes=budget)
        head = train_dense_probe(features, task_targets, train, task=task, grid=grid,
                                 channels=channels, target_side=cfg.target_side, cfg=cfg.dense, num_classes=L)
        full = ((int(i), full_target(manifest, int(i), task)) for i in val)
        out[task] = score_dense_probe(head, features, full, task=task, num_classes=L, threads=cfg.dense.threads)
        out[task]["num_train"] = int(len(train))
    return out
