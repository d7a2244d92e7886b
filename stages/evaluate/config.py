"""The evaluate and report stages' settings (`pipeline evaluate`, `pipeline report`; params.yaml's
`evaluate:` and `report:` sections). The kNN protocol of the papers (AM-RADIO arXiv 2312.06709, PHI-S
arXiv 2410.01680): cosine, τ = 0.07, k = 20; downstream evaluation as in stages/evaluate/downstream.py.

The one place these defaults are declared: the commands' option defaults, `evaluate_run`'s and
params.yaml's missing keys all come from here (the downstream ones from `DownstreamConfig`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from stages.evaluate.downstream import DownstreamConfig
from store_schema.layout import demo_probe_labels_path

# evaluate.probe_labels when params.yaml leaves the key out (or says `auto`): the demo corpus layout,
# probe_labels.csv beside the corpus image folder, used when it exists. `null` is no label probe at all.
AUTO_LABELS = Path("auto")


@dataclass(frozen=True)
class EvaluateConfig:
    """split: the manifest split evaluated; batch_size: views per student forward; probe_labels: CSV uri,label
    of the kNN probe (None: no label probe; AUTO_LABELS, the default: probe_labels.csv beside the corpus image
    folder when there is one); knn_feature:
    the probe's feature, "concat" (every student summary token) or "token0"; zeroshot_teacher: the one
    zero-shot the PHI-S ranking counts (None: the first CLIP-family teacher with text); the other
    zeroshot_* / seg_* fields: the downstream evaluation (None class file / masks folder: skipped)."""

    split: str = "val"
    batch_size: int = 32
    probe_labels: Path | None = AUTO_LABELS
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_feature: str = "concat"  # every student summary token concatenated (RADIO's kNN feature), or token0
    zeroshot_classes: Path | None = DownstreamConfig.zeroshot_classes
    zeroshot_templates: str = DownstreamConfig.zeroshot_templates
    zeroshot_teacher: str | None = DownstreamConfig.zeroshot_teacher  # the zero-shot the ranking counts
    seg_masks: Path | None = DownstreamConfig.seg_masks
    seg_classes: Path | None = DownstreamConfig.seg_classes
    seg_templates: str = DownstreamConfig.seg_templates
    seg_probe_steps: int = DownstreamConfig.seg_probe_steps
    # Evaluation datasets in released layouts (`pipeline evaluate --on`, docs/EVALUATION.md): each name is a
    # folder of bench_sources built into the dataset root <bench_root>/<name> with its layout ({}: none);
    # the probes' settings are `pipeline evaluate`'s options of the same names.
    bench_sources: Path = Path("data/demo_corpus/bench")
    bench_root: Path = Path("data/bench")
    bench_datasets: dict[str, str] = field(default_factory=dict)  # name -> layout
    bench_text_datasets: list[str] = field(default_factory=list)  # zero-shot: the CLIP teachers embed their classes
    probe_iterations: int = 2000  # mini-batch iterations of the dense probes (segmentation, depth, normals)
    probe_batch_size: int = 16
    probe_lr: float = 1e-3  # AdamW learning rate of the dense probes (cosine decay)
    linear_iterations: int = 1000  # mini-batch iterations of the linear classifier probe
    target_side: int = 128  # side of the dense probes' training targets (cached per dataset root)
    probe_memory: int = 1024  # MiB of a probe's features held in memory when they all fit

    def check(self) -> None:
        """ValueError naming the evaluate.* key when the settings (kNN feature, split, the evaluation datasets'
        settings) do not hold together."""
        from stages.corpus.layouts import LAYOUTS

        if self.knn_feature not in ("concat", "token0"):
            raise ValueError(f"evaluate.knn_feature must be 'concat' or 'token0', got {self.knn_feature!r}")
        if self.split not in ("train", "val"):
            raise ValueError(f"evaluate.split must be 'train' or 'val', got {self.split!r}")

        bad = {n: lay for n, lay in self.bench_datasets.items() if lay not in LAYOUTS or lay == "files"}
        if bad:
            raise ValueError(f"evaluate.bench_datasets {bad}: unknown layout; valid layouts: "
                             f"{', '.join(x for x in LAYOUTS if x != 'files')}")
        stray = sorted(set(self.bench_text_datasets) - set(self.bench_datasets))
        if stray:
            raise ValueError(f"evaluate.bench_text_datasets names {stray}, which are not in evaluate.bench_datasets "
                             f"{sorted(self.bench_datasets)}")
        if self.probe_lr <= 0:
            raise ValueError(f"evaluate.probe_lr must be > 0, got {self.probe_lr}")
        for key in ("probe_iterations", "probe_batch_size", "linear_iterations", "target_side"):
            if getattr(self, key) < 1:
                raise ValueError(f"evaluate.{key} must be >= 1, got {getattr(self, key)}")

    def bench_roots(self) -> list[Path]:
        """The dataset roots `pipeline evaluate --on` scores every run on."""
        return [self.bench_root / name for name in self.bench_datasets]

    def downstream(self) -> DownstreamConfig:
        """The downstream part (zero-shot, segmentation probes)."""
        return DownstreamConfig(zeroshot_classes=self.zeroshot_classes, zeroshot_templates=self.zeroshot_templates,
                                seg_masks=self.seg_masks, seg_classes=self.seg_classes,
                                seg_templates=self.seg_templates, seg_probe_steps=self.seg_probe_steps,
                                zeroshot_teacher=self.zeroshot_teacher)


@dataclass(frozen=True)
class ReportConfig:
    """out: folder of report.md, report.csv, cost.json and the plots."""

    out: Path = Path("reports/sweep")


def probe_labels_file(labels: Path | None, image_root: Path) -> tuple[Path | None, str]:
    """The labels file of the probes that need labels (kNN, linear, zero-shot) and, when there is none, why.

    None (params.yaml's `evaluate.probe_labels: null`): no label probe, whatever lies beside the images;
    AUTO_LABELS (the key left out, or `auto`): probe_labels.csv beside the corpus image folder when it exists
    (the demo corpus layout); any other path: that file (its existence is checked before any work)."""
    if labels is None:
        return None, ("no labels: evaluate.probe_labels is null, which runs no label probe (a CSV uri,label there "
                      "or --probe-labels FILE runs it)")
    if Path(labels) != AUTO_LABELS:
        return Path(labels), ""
    beside = Path(os.path.abspath(demo_probe_labels_path(Path(image_root).parent)))  # named without ../
    if beside.is_file():
        return beside, ""
    return None, (f"no labels: evaluate.probe_labels is left out (auto) and there is no probe_labels.csv beside the "
                  f"corpus images at {beside}; a CSV uri,label there, or given as evaluate.probe_labels / "
                  "--probe-labels FILE, runs the kNN probe")
