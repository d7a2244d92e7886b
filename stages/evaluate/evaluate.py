"""Evaluate one distillation run on the held-out split (AM-RADIO arXiv 2312.06709; PHI-S arXiv 2410.01680).

For every (image, view) sample of the split that every teacher's store holds, the student and its heads
predict each teacher's *normalized* targets; the run's fitted normalizers invert the predictions to the
teacher's own space, where errors are measured against the stored targets (the PHI-S paper always
reports errors in teacher space, so that variants are comparable). Per teacher and token kind:
teacher-space MSE, mean / minimum token cosine, and the range of per-channel error variance in teacher
and in normalized space (``stages.evaluate.metrics``).

Downstream probe: when the corpus has labels (``probe_labels.csv`` with columns uri,label, as the demo
corpus writes beside its images folder), the student's *raw* summary tokens (before any head) of view 0
(the full image) of every labeled ok image are the feature: by default (``knn_feature="concat"``) all K
summary tokens concatenated, as RADIO's ``_extract_final`` forms its summary (one CLS token per teacher);
``"token0"`` takes token 0 only. The kNN classifier (cosine, τ = 0.07, k = 20) is fitted on the manifest's
train split and scored on the val split; ``probe.knn_feature`` / ``probe.feature`` record which feature.
kNN accuracy is also reported per teacher summary head (its teacher-space output) under ``probe.heads``.

Downstream (``stages.evaluate.downstream``, with a ``DownstreamConfig``): zero-shot classification,
linear-probe and open-vocabulary segmentation of the exported student (``export.safetensors`` through
``stages.distill.exported.load_exported``) with its teachers' stored outputs as references, under the
keys ``zeroshot`` and ``seg`` (metrics only; what they were measured on is under ``downstream_info``;
``zeroshot_skipped`` / ``seg_skipped`` say why one was not run). ``zeroshot_ranked`` names the one
zero-shot teacher the PHI-S ranking counts (``downstream.ranked_zeroshot_teacher``).

Writes ``<run>/eval/metrics.json``. Shape legend: B batch, K summary tokens, C channels, h/w grid.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.corpus.samples import render_samples
from stages.distill.exported import load_exported
from stages.distill.loader import StoreSet
from stages.distill.run import load_run, run_progress
from stages.distill.run_dir import eval_cache_dir, eval_path
from stages.evaluate.config import AUTO_LABELS, EvaluateConfig, probe_labels_file
from stages.evaluate.downstream import (DownstreamConfig, clip_teachers, ranked_zeroshot_teacher, seg_eval,
                                       zeroshot_eval)
from stages.evaluate.bench import BenchConfig, check_bench_roots
from stages.evaluate.knn import KNN_FEATURES, knn_accuracy, linear_probe_accuracy, summary_feature
from stages.evaluate.metrics import ErrorAccumulator
from stages.evaluate.resolutions import eval_sizes, resolution_report, trained_sizes
from store_schema.location import as_location
from stages.students.preprocess import student_pixels
from stages.teachers.resize import batch_frames, content_tokens


def config_field(config: dict[str, Any], key: str, run: str) -> Any:
    """One field of a run's config, with an error naming the run and the keys it has."""
    if key not in config:
        raise ValueError(f"run {run!r}: config.json has no {key!r}; it has {sorted(config)}")
    return config[key]


def read_probe_labels(path: Path) -> dict[str, str]:
    """uri → label from a CSV with a header row containing ``uri`` and ``label``."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"uri", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns uri,label, found {reader.fieldnames}")
        return {row["uri"]: row["label"] for row in reader}


@torch.no_grad()
def _forward(student: torch.nn.Module, heads: torch.nn.Module, manifest: Any, pairs_B2: np.ndarray,
             img_size: int, frames: dict[str, np.ndarray] | None = None, only: tuple[str, ...] | None = None
             ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor | None, torch.Tensor]]]:
    """(raw student summary tokens [B, K, C], head outputs in normalized space per teacher (`only` these));
    frames (StoreSet.frames) align the predictions of teachers with their own resize rule to their stored
    grids."""
    device = next(student.parameters()).device
    out = student(student_pixels(torch.from_numpy(render_samples(manifest, pairs_B2, img_size)), device=device))
    if frames and only is not None:
        frames = {t: f for t, f in frames.items() if t in only}
    frames_B = batch_frames(frames, pairs_B2[:, 0], pairs_B2[:, 1], device)
    return out.summary_BKC.float(), heads(out, frames=frames_B or None, only=only)


def _teacher_errors(student, heads, stores: Any, normalizers: dict, pairs_M2: np.ndarray, *,
                    img_size: int | dict[str, int], batch_size: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per teacher and kind, metrics accumulated over all samples (teacher space and normalized space).
    img_size: the student's input side, or per store key (a resolution partition's stores at its side)."""
    sizes = img_size if isinstance(img_size, dict) else {t: img_size for t in normalizers}
    groups = {size: tuple(t for t in normalizers if sizes[t] == size) for size in dict.fromkeys(sizes.values())}
    accs = {t: {k: ErrorAccumulator() for k in normalizers[t]} for t in normalizers}
    frames = stores.frames  # teachers with their own resize rule: padded tokens are not evaluated
    for lo, (size, group) in ((lo, g) for g in groups.items() for lo in range(0, len(pairs_M2), batch_size)):
        pairs_B2 = pairs_M2[lo : lo + batch_size]
        _, preds = _forward(student, heads, stores.manifest, pairs_B2, size, frames, only=group)
        for t, (summary_norm_BC, patches_norm_BhwC) in preds.items():
            s_IVC, p_IVhwC, _ = stores.stores[t].read_images(pairs_B2[:, 0])
            targets = {"patches": torch.from_numpy(np.asarray(p_IVhwC[np.arange(len(pairs_B2)), pairs_B2[:, 1]],
                                                              np.float32))}
            if s_IVC is not None:
                targets["summary"] = torch.from_numpy(
                    np.asarray(s_IVC[np.arange(len(pairs_B2)), pairs_B2[:, 1]], np.float32))
            pred_norm = {"patches": patches_norm_BhwC, "summary": summary_norm_BC}
            for kind, acc in accs[t].items():
                norm = normalizers[t][kind]
                p_norm, target = pred_norm[kind].float().cpu(), targets[kind]
                if kind == "patches" and t in frames:  # only the tokens that hold the view
                    content_Bhw = content_tokens(frames[t][pairs_B2[:, 0], pairs_B2[:, 1]], tuple(target.shape[1:3]))
                    p_norm, target = p_norm[content_Bhw], target[content_Bhw]
                acc.add(norm.invert(p_norm), target, pred_norm=p_norm, target_norm=norm.apply(target))
    out = {t: {k: a.result() for k, a in kinds.items()} for t, kinds in accs.items()}
    for t, kinds in out.items():  # normalized error: MSE / mean per-channel variance of the stored targets
        for kind, vals in kinds.items():
            var = float(np.mean(np.diag(stores.stores[t].stats(kind).covariance())))
            vals["nmse"] = vals["mse"] / var if var > 0 else None
    return out


def _probe(student, heads, manifest: Any, normalizers: dict, labels: dict[str, str], *, img_size: int,
           batch_size: int, k: int, temperature: float, knn_feature: str) -> dict[str, Any]:
    """kNN (and linear) probe on view 0 of labeled ok images: fit on train, score on val."""
    ids = np.array([i for i in manifest.ids if manifest.ok_N[i] and manifest.uris[i] in labels], np.int64)
    y_N = np.array([labels[manifest.uris[i]] for i in ids])
    split_N = manifest.split[ids]
    feats: dict[str, list[np.ndarray]] = {"student": []}
    for lo in range(0, len(ids), batch_size):
        pairs_B2 = np.stack([ids[lo : lo + batch_size], np.zeros(len(ids[lo : lo + batch_size]), np.int64)], 1)
        raw_BKC, preds = _forward(student, heads, manifest, pairs_B2, img_size)
        feats["student"].append(summary_feature(raw_BKC, knn_feature).cpu().numpy())
        for t, (summary_BC, _) in preds.items():
            if summary_BC is not None:
                feats.setdefault(t, []).append(normalizers[t]["summary"].invert(summary_BC.float().cpu()).numpy())
    tr, va = split_N == "train", split_N == "val"
    if tr.sum() == 0 or va.sum() == 0:
        raise ValueError(f"probe labels cover {int(tr.sum())} train and {int(va.sum())} val images; need both")
    x = {name: np.concatenate(parts) for name, parts in feats.items()}
    acc = {name: knn_accuracy(x_NC[tr], y_N[tr], x_NC[va], y_N[va], k=k, temperature=temperature)
           for name, x_NC in x.items()}
    linear = (linear_probe_accuracy(x["student"][tr], y_N[tr], x["student"][va], y_N[va])
              if len(np.unique(y_N[tr])) > 1 else None)
    return {"feature": KNN_FEATURES[knn_feature], "knn_feature": knn_feature,
            "summary_tokens": int(student.num_summary_tokens) if knn_feature == "concat" else 1,
            "knn_acc": acc.pop("student"),
            "linear_acc": linear, "heads": acc, "k": k, "temperature": temperature,
            "num_train": int(tr.sum()), "num_val": int(va.sum()), "num_classes": int(len(np.unique(y_N)))}


def _downstream(run_dir: Path, stores: Any, cfg: DownstreamConfig, labels_path: Path | None, *, split: str,
                batch_size: int, device: str) -> dict[str, Any]:
    """zeroshot / seg results of the exported student, or *_skipped reasons."""
    out: dict[str, Any] = {}
    if cfg.zeroshot_classes is None:
        out["zeroshot_skipped"] = "no zero-shot class file given"
    elif labels_path is None:
        out["zeroshot_skipped"] = "it needs the probe labels, and there are none (as for the kNN probe)"
    elif not clip_teachers(stores.stores):
        out["zeroshot_skipped"] = "the run has no CLIP-family (open_clip) teacher"
    if cfg.seg_masks is None or cfg.seg_classes is None:
        out["seg_skipped"] = "no segmentation masks folder / class file given"
    if len(out) == 2:
        return out
    model = load_exported(run_dir, device=device)
    info: dict[str, Any] = {}
    if "zeroshot_skipped" not in out:
        out["zeroshot_ranked"] = ranked_zeroshot_teacher(stores.stores, cfg.zeroshot_teacher)
        out["zeroshot"], info["zeroshot"] = zeroshot_eval(model, stores.manifest, stores.stores,
                                                          read_probe_labels(labels_path), cfg, split=split,
                                                          batch_size=batch_size)
    if "seg_skipped" not in out:
        out["seg"], info["seg"] = seg_eval(model, stores.manifest, stores.stores, cfg, split=split,
                                           batch_size=batch_size)
    out["downstream_info"] = info
    return out


def _bench(run_dir: Path, names: dict[str, Any], cfg: BenchConfig, progress: dict[str, Any], teachers: list[str], *,
           device: str, log: Any) -> dict[str, Any]:
    """{dataset name: scores} of the exported student on each evaluation dataset root (``check_bench_roots``)."""
    from stages.evaluate.bench_run import evaluate_on_root

    model = load_exported(run_dir, device=device)
    run_key = {"run_fingerprint": progress["fingerprint"], "checkpoint_step": progress["checkpoint_step"]}
    return {name: evaluate_on_root(run_dir, r, model, run_key=run_key, teachers=list(teachers), cfg=cfg, log=log)
            for name, r in names.items()}


def evaluate_run(run_dir: Path, *, split: str = EvaluateConfig.split, batch_size: int = EvaluateConfig.batch_size,
                 labels_path: Path | None = EvaluateConfig.probe_labels, knn_k: int = EvaluateConfig.knn_k,
                 knn_temperature: float = EvaluateConfig.knn_temperature,
                 knn_feature: str = EvaluateConfig.knn_feature, device: str = "cpu",
                 downstream: DownstreamConfig | None = None, root: Any = None,
                 resolutions: list[int] | None = None, bench_roots: list[Any] = (),
                 bench: BenchConfig | None = None, log: Any = None) -> dict[str, Any]:
    """Evaluate a run on a manifest split; writes and returns <run>/eval/metrics.json's content.

    ``labels_path`` (CSV uri,label; uris as the manifest spells them) defaults to ``AUTO_LABELS``, the demo
    corpus layout: probe_labels.csv beside the manifest's image folder, the probe skipped when there is none;
    None runs no label probe (params.yaml's ``evaluate.probe_labels: null``); ``probe_skipped`` records why a
    probe was skipped. An explicit ``labels_path`` that does not exist, or a file that is malformed, is an
    error. ``downstream`` adds zero-shot (needs the probe labels) and segmentation
    results (see the module docstring). ``root`` reads the stores from another store root than the one
    the run recorded (a moved or copied root; its stores must be the run's, `stages.distill.run.moved_root`).
    ``knn_feature``: "concat" (every student summary token, RADIO's kNN feature) or "token0".
    ``bench_roots``: evaluation dataset roots (`pipeline corpus --layout`), scored with ``bench``
    (``stages.evaluate.bench``) under ``bench/<dataset>``.

    ``resolutions``: the student sides of the per-resolution evaluation (stages/evaluate/resolutions.py);
    None: automatic (a run of several partition sides: each and one side it was not trained at), []: off.

    metrics.json records which training state it measured: ``checkpoint_step``, ``run_steps``,
    ``finished`` and ``run_fingerprint`` (stages.distill.run.run_fingerprint), so a report can tell an
    evaluation of an older or unfinished state of the run from a current one.
    """
    run_dir = Path(run_dir)
    summary_feature(torch.zeros(1, 1, 1), knn_feature)  # an unknown feature name fails before any work
    bench = bench or BenchConfig()
    bench_names = check_bench_roots(list(bench_roots), bench.probes)  # every --on root, before any work
    if labels_path is not None and Path(labels_path) != AUTO_LABELS and not Path(labels_path).is_file():
        raise FileNotFoundError(f"probe labels file {labels_path} does not exist (a CSV with columns uri,label); "
                                "fix the path, or set evaluate.probe_labels: null to run no label probe")
    progress = run_progress(run_dir)
    config, student, heads, normalizers = load_run(run_dir, root=root)  # root: a moved store root (checked)
    cfg = config.to_dict()
    student, heads = student.to(device).eval(), heads.to(device).eval()
    stores = StoreSet(as_location(cfg["root"]), cfg["teachers"], norm=cfg["norm"], summary_loss=cfg["summary_loss"])
    pairs_M2 = stores.samples(split)
    if len(pairs_M2) == 0:
        raise ValueError(f"split {split!r} has no usable (image, view) samples in the stores at {cfg['root']}")
    for store in stores.stores.values():  # a lost chunk reads as zeros: refuse instead of scoring against them
        store.require_stored(pairs_M2[:, 0], reader="evaluation")
    result: dict[str, Any] = {
        "run": run_dir.name, "split": split, "norm": cfg["norm"], "summary_loss": cfg["summary_loss"],
        "seed": cfg["seed"], "student": cfg["student"],
        "num_samples": int(len(pairs_M2)), "teacher_set": sorted(cfg["teachers"]),
        "manifest_hash": stores.manifest.hash, "checkpoint_step": progress["checkpoint_step"],
        "run_steps": progress["steps"], "finished": progress["finished"],
        "run_fingerprint": progress["fingerprint"],
        "teachers": _teacher_errors(student, heads, stores, normalizers, pairs_M2, img_size=trained_sizes(config),
                                    batch_size=batch_size),
        "partitions": [p.to_dict() for p in config.train_partitions],
    }
    labels_path, no_labels = probe_labels_file(labels_path, stores.manifest.image_root)  # None: no label probe
    if labels_path is not None:
        result["probe"] = _probe(student, heads, stores.manifest, normalizers, read_probe_labels(labels_path),
                                 img_size=cfg["img_size"], batch_size=batch_size, k=knn_k,
                                 temperature=knn_temperature, knn_feature=knn_feature)
        result["probe_labels"] = str(labels_path)
    else:
        result["probe"] = None
        result["probe_skipped"] = no_labels
    result.update(_downstream(run_dir, stores, downstream or DownstreamConfig(), labels_path, split=split,
                              batch_size=batch_size, device=device))
    sizes = eval_sizes(config, resolutions)
    if sizes:  # a multi-resolution student: every trained side and an untrained one, and their consistency
        labels = read_probe_labels(labels_path) if labels_path is not None else None
        result["resolutions"] = resolution_report(
            student, heads, stores, normalizers, pairs_M2, sizes=sizes, trained=sorted(set(trained_sizes(config).values())),
            batch_size=batch_size, errors=lambda size: _teacher_errors(student, heads, stores, normalizers, pairs_M2,
                                                                       img_size=size, batch_size=batch_size),
            probe=None if labels is None else lambda size: _probe(
                student, heads, stores.manifest, normalizers, labels, img_size=size, batch_size=batch_size, k=knn_k,
                temperature=knn_temperature, knn_feature=knn_feature)["knn_acc"])
    if bench_names:
        result["bench"] = _bench(run_dir, bench_names, bench, progress, cfg["teachers"],
                                 device=device, log=log or (lambda _: None))
    out = eval_path(run_dir)
    eval_cache_dir(run_dir).mkdir(parents=True, exist_ok=True)  # always there: dvc.yaml declares it an output
    tmp = out.with_suffix(".json.tmp")  # written whole, then renamed: never a torn metrics.json
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True))
    tmp.replace(out)
    return result
