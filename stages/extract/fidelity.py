"""Measure a store's storage fidelity per normalization variant (PHI-S, arXiv 2410.01680; see
``stages.normalize.fidelity`` for the definitions and the gate).

On the first ``num_images`` usable train-split images (all their stored views) the teacher is run twice,
in float32 and under bf16 autocast; the float32 output y is rounded exactly as the store rounds it
(``round_as_stored``) to give ŷ. Each variant's normalizer is fitted as stage two fits it (same
statistics, split, storage precision) and the storage NMSE and the teacher's bf16 NMSE are measured after
it. The result is written to ``store_schema.layout.fidelity_path`` with the store's statistics hashes, so
a later reader can tell a stale check from a current one. Stage two never runs this (it never touches a
teacher): stage one does, after extraction (``pipeline extract`` with ``--fidelity-images``, as dvc.yaml and ``pipeline demo`` run it), or
``pipeline store fidelity``.

Shape legend: B views, h/w storage grid, C channels, N tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.corpus.samples import decode_checked
from stages.corpus.views import render_view
from stages.extract.pooling import pool_patches
from stages.normalize import NormVariant, fit_normalizer
from stages.normalize.fidelity import FidelityCheck, check_variant
from stages.teachers.preprocess import to_pixels
from stages.teachers.registry import build_teacher
from store_schema.codecs import round_as_stored
from store_schema.layout import fidelity_path, hadamard_cache_dir, manifest_path
from store_schema.manifest import Manifest, read_manifest
from store_schema.teacher_store import TeacherStore

FIDELITY_VERSION = 2  # 2: the paper-exact whitenings and the noise-floored *_nf variants


def _views(manifest: Manifest, store: TeacherStore, num_images: int) -> np.ndarray:
    """uint8 [B, R, R, 3]: every view of the first usable train images, rendered at the teacher's side."""
    out = []
    for i in manifest.split_ids("train"):
        img, _ = decode_checked(manifest, int(i))
        if img is None:
            continue
        boxes_V4, flips_V = manifest.view_boxes_NV4[i], manifest.view_flips_NV[i]
        out += [render_view(img, boxes_V4[v], bool(flips_V[v]), store.spec.resolution)
                for v in range(store.num_views)]
        if len(out) >= num_images * store.num_views:
            break
    if not out:
        raise ValueError(f"the manifest has no usable train image to measure {store.key}'s fidelity on")
    return np.stack(out)


@torch.inference_mode()
def _outputs(teacher: torch.nn.Module, store: TeacherStore, pixels_BCHW: torch.Tensor, *,
             bf16: bool) -> dict[str, np.ndarray]:
    """{kind: float32 tokens [N, C]} of the teacher on these pixels (patches pooled to the storage grid)."""
    with torch.autocast(pixels_BCHW.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = teacher(pixels_BCHW)
    patches = pool_patches(out.patches_BhwC.float(), store.grid).cpu().numpy()
    res = {"patches": patches.reshape(-1, store.patch_dim)}
    if store.summary_dim > 0:
        res["summary"] = out.summary_BC.float().cpu().numpy().reshape(-1, store.summary_dim)
    return res


def measure_store_fidelity(store: TeacherStore, manifest: Manifest, *, root: Path, num_images: int = 16,
                           checkpoint: Path | None = None, device: str = "cpu",
                           batch_size: int = 16) -> dict[str, Any]:
    """Measure every variant's fidelity on this store (see the module docstring); returns the JSON dict."""
    from stages.normalize.store_fit import normalizer_moments

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    teacher = build_teacher(store.spec, checkpoint=checkpoint, device=device).eval()
    views_BRR3 = _views(manifest, store, num_images)
    exact: dict[str, list[np.ndarray]] = {}
    bf16: dict[str, list[np.ndarray]] = {}
    for lo in range(0, len(views_BRR3), batch_size):
        pixels = to_pixels(views_BRR3[lo:lo + batch_size], store.spec).to(device)
        for acc, flag in ((exact, False), (bf16, True)):
            for kind, x in _outputs(teacher, store, pixels, bf16=flag).items():
                acc.setdefault(kind, []).append(x)
    keepbits = store.codec.keepbits
    checks: list[FidelityCheck] = []
    splits = {}
    for kind in store.kinds:
        y_ND, yb_ND = np.concatenate(exact[kind]), np.concatenate(bf16[kind])
        stored_ND = round_as_stored(y_ND, store.codec)
        moments, splits[kind] = normalizer_moments(store, kind)
        for variant in (v for v in NormVariant if v.fit_as is v):  # an AdaLoss variant trains on its base's targets
            norm = fit_normalizer(variant, moments, hadamard_cache=hadamard_cache_dir(root), keepbits=keepbits,
                                  split=splits[kind])
            checks.append(check_variant(norm, kind, exact_ND=y_ND, stored_ND=stored_ND, bf16_ND=yb_ND,
                                        moments=moments, keepbits=keepbits))
    return {"fidelity_version": FIDELITY_VERSION, "teacher": store.key, "keepbits": keepbits,
            "device": str(device), "num_views": int(len(views_BRR3)), "fit_split": splits,
            "stats_hash": {k: normalizer_moments(store, k)[0].content_hash() for k in store.kinds},
            "checks": [c.to_dict() for c in checks]}


def write_fidelity(root: Path, result: dict[str, Any]) -> Path:
    """Write a measurement (atomically) to <root>/fidelity/<teacher>.json; returns the path."""
    path = fidelity_path(root, result["teacher"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_fidelity(root: Path, store: TeacherStore) -> tuple[list[FidelityCheck] | None, str]:
    """(checks, "") when a current measurement exists for this store; else (None, why not)."""
    from stages.normalize.store_fit import normalizer_moments

    path = fidelity_path(root, store.key)
    if not path.is_file():
        return None, f"not measured (no {path}; run `pipeline store fidelity --root {root}`)"
    data = json.loads(path.read_text())
    current = {k: normalizer_moments(store, k)[0].content_hash() for k in store.kinds}
    if data.get("fidelity_version") != FIDELITY_VERSION:
        return None, (f"stale ({path} is fidelity version {data.get('fidelity_version')!r}, measured on other "
                      f"variant fits than version {FIDELITY_VERSION}'s; rerun `pipeline store fidelity`)")
    if data.get("stats_hash") != current:
        return None, f"stale ({path} was measured on other statistics; rerun `pipeline store fidelity`)"
    return [FidelityCheck.from_dict(c) for c in data["checks"]], ""


def ensure_fidelity(root: Path, store: TeacherStore, *, num_images: int, device: str = "cpu",
                    checkpoint: Path | None = None) -> tuple[list[FidelityCheck], Path | None]:
    """(the store's checks, the file written now or None): measured and written unless a current
    measurement exists (what every extraction with `fidelity_images` > 0 ends with)."""
    checks, _ = read_fidelity(root, store)
    if checks is not None:
        return checks, None
    result = measure_store_fidelity(store, read_manifest(manifest_path(root)), root=root, num_images=num_images,
                                    device=device, checkpoint=checkpoint)
    return [FidelityCheck.from_dict(c) for c in result["checks"]], write_fidelity(root, result)


def fidelity_summary(store: TeacherStore, checks: list[FidelityCheck]) -> str:
    """One line: how many variant·kind checks pass, and the variants that fail the gate."""
    failed = sorted({c.variant for c in checks if not c.passed})
    return (f"fidelity {store.key}: {len(checks) - sum(not c.passed for c in checks)}/{len(checks)} "
            f"variant·kind checks pass" + (f"; WARNING: {', '.join(failed)} fail the gate" if failed else ""))
