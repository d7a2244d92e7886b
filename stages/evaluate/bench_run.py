"""One run on one evaluation dataset root: the student's scores and the teachers' cached references
(`pipeline evaluate RUN --on ROOT`; the probes and metrics are in ``stages.evaluate.bench``).

Teacher references are the same probes on each teacher's stored view-0 outputs over the dataset
(``pipeline extract --root ROOT --teacher T`` once per dataset). They do not depend on the run, so they
are computed once per dataset and kept in ``<root>/bench/references.json``: one entry per teacher and
probe, keyed by the sha256 of the teacher store's fingerprint (``TeacherStore.fingerprint``) and of the
probe's settings; a later run with the same settings reads them. A teacher of the run without a store
under the dataset root gets no reference, and the result says why and how to extract it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stages.corpus.layouts import write_class_file
from stages.evaluate.bench import BenchConfig, check_probes, classification_scores, dataset_manifest, dense_scores
from stages.evaluate.bench_targets import DENSE_TASKS, dataset_targets
from stages.evaluate.feature_cache import TeacherFeatures, student_features
from stages.prompts import prompt_set
from stages.teachers.spec import Family
from store_schema import layout, location, text_store
from store_schema.manifest import Manifest
from store_schema.teacher_store import open_teacher_store

_EXTRACT_HINT = "extract it once per dataset with `pipeline extract --root {root} --teacher {teacher}`"


class _Targets:
    """Training targets of the dataset, read by task (the dense probes' target reader)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def read(self, task: str, ids: np.ndarray) -> np.ndarray:
        return self.cache.read(task, ids)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _teacher_stores(root: Any, manifest: Manifest, teachers: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """({teacher: store} complete stores of this dataset, {teacher: why there is none})."""
    stores, skipped = {}, {}
    for t in teachers:
        path = layout.teacher_store_path(root, t)
        if not location.is_file(layout.store_file(path, layout.ZARR_JSON)):
            skipped[f"teacher_refs/{t}"] = f"no store {path}: " + _EXTRACT_HINT.format(root=root, teacher=t)
            continue
        store = open_teacher_store(path, expect_manifest_hash=manifest.hash)
        done = len(store.completed_shards())
        if done < store.num_shards:
            raise ValueError(f"{path} is incomplete ({done}/{store.num_shards} shards): finish it with "
                             f"`pipeline extract --root {root} --teacher {t}` before evaluating on {root}")
        stores[t] = store
    return stores, skipped


def _text(root: Any, store: Any, manifest: Manifest, cfg: BenchConfig) -> np.ndarray | str:
    """The teacher's stored text embeddings of the dataset's class names, or why there are none."""
    classes = write_class_file(manifest.dataset, layout.dataset_classes_path(root))
    prompts = prompt_set(classes, cfg.zeroshot_templates)
    try:
        return text_store.read_text_embeddings(store.path, prompts, classes_file=classes)
    except text_store.MissingTextEmbeddingsError:
        return (f"{store.path} has no text embeddings of the class names of {root} ({cfg.zeroshot_templates} "
                f"templates): run `pipeline extract-text --teacher {store.spec.name} --root {root} --classes {root} "
                f"--templates {cfg.zeroshot_templates}`")


def _zeroshot_sources(root: Any, manifest: Manifest, stores: dict[str, Any], read: Callable[[str], Callable],
                      cfg: BenchConfig, skipped: dict[str, str]) -> dict[str, tuple[Callable, np.ndarray]]:
    out = {}
    for t, store in stores.items():
        if store.spec.family is not Family.OPEN_CLIP:
            continue
        text = _text(root, store, manifest, cfg)
        if isinstance(text, str):
            skipped[f"zeroshot/{t}"] = text
        else:
            out[t] = (read(t), text)
    return out


def _reference(root: Any, manifest: Manifest, t: str, store: Any, probes: tuple[str, ...], cfg: BenchConfig,
               targets: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """One teacher's reference scores, from references.json where the same store and settings scored them."""
    path = layout.bench_references_path(root)
    cached = json.loads(location.read_bytes(path)) if location.is_file(path) else {}
    store_key = _digest(store.fingerprint())
    feats = TeacherFeatures(store)
    out: dict[str, Any] = {}
    for probe in probes:
        key = _digest({"store": store_key, "probe": probe, "settings": cfg.key(probe)})
        entry = cached.get(t, {}).get(probe)
        if entry and entry.get("key") == key:
            out.update(entry["scores"])
            continue
        dense = probe in DENSE_TASKS.get(manifest.dataset.layout, ())
        sources = (_zeroshot_sources(root, manifest, {t: store}, lambda _: feats.summary, cfg, {})
                   if probe == "zeroshot" else {})
        if not dense and (feats.summary_dim == 0 or (probe == "zeroshot" and not sources)):
            continue  # no summary token (SAM), not a CLIP teacher, or no text embeddings yet (the student's says so)
        log(f"teacher reference {t} / {probe} on {manifest.dataset.name}: computing once (cached in {path})")
        if dense:
            scores = dense_scores((probe,), manifest, targets, feats.features, feats.grid, feats.channels, cfg)
        elif probe == "zeroshot":
            zs = classification_scores((), manifest, feats.summary, feats.summary_dim, cfg, sources)
            scores = {"zeroshot_top1": zs["zeroshot"][t]["top1"]}
        else:
            scores = classification_scores((probe,), manifest, feats.summary, feats.summary_dim, cfg, {})
        cached.setdefault(t, {})[probe] = {"key": key, "scores": scores}
        location.write_bytes(path, json.dumps(cached, indent=2, sort_keys=True).encode())
        out.update(scores)
    return out


def evaluate_on_root(run_dir: Path, root: Any, model: Any, *, run_key: dict[str, Any], teachers: list[str],
                     cfg: BenchConfig, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The run's scores on one dataset root, with the teachers' references (see the module docstring)."""
    manifest = dataset_manifest(root)
    probes = check_probes(manifest, root, cfg.probes)
    dense = [p for p in probes if p in DENSE_TASKS.get(manifest.dataset.layout, ())]
    student = student_features(model, manifest, run_dir, run_key=run_key, dense=bool(dense),
                               batch_size=cfg.batch_size, log=log)
    stores, skipped = _teacher_stores(root, manifest, teachers)
    targets = _Targets(dataset_targets(manifest, root, cfg.target_side, log=log)) if dense else None
    result: dict[str, Any] = {"layout": manifest.dataset.layout, "probes": list(probes),
                              "num_images": int(manifest.ok_N.sum()),
                              "num_train": int(len(manifest.split_ids("train"))),
                              "num_val": int(len(manifest.split_ids("val")))}
    if dense:
        result.update(dense_scores(tuple(dense), manifest, targets, student.features, student.grid, student.channels,
                             cfg))
        result["inference"] = "whole image at full target resolution (no sliding window)"
    cls = tuple(p for p in probes if p in ("knn", "linear"))
    if cls or "zeroshot" in probes:
        zs = (_zeroshot_sources(root, manifest, {t: s for t, s in stores.items() if t in student.adaptors},
                                lambda t: (lambda ids: student.adaptor_summary(t, ids)), cfg, skipped)
              if "zeroshot" in probes else {})
        result.update(classification_scores(cls, manifest, student.summary, student.summary_dim, cfg, zs))
        result["feature"] = "concatenated student summary tokens (view 0)"
    refs = {t: _reference(root, manifest, t, s, probes, cfg, targets, log) for t, s in stores.items()}
    result["teacher_refs"] = {t: r for t, r in refs.items() if r}
    if skipped:
        result["skipped"] = skipped
    return result
