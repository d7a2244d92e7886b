"""Per-resolution evaluation of a multi-resolution student, and whether it switches modes (AM-RADIO arXiv
2312.06709 trains partitions at several resolutions; RADIOv2.5 arXiv 2412.07679 names "mode switching": a
student whose features change character with the input resolution, e.g. DINO/CLIP-like below ~720 px and
SAM-like above).

For a run trained at several student sides (resolution partitions, stages/distill/partitions.py) the
evaluation runs the student at each trained side and at one side it was not trained at (`untrained_size`:
between the two smallest trained sides, or 1.5x the side when all partitions share one), and reports:

* per side: every adaptor's teacher-space errors (mse, mean token cosine) against its store's targets (the
  head resizes its output to the store's grid whatever the input side), and the kNN accuracy of the raw
  student summary when the corpus has probe labels;
* consistency: for each pair of neighbouring sides (a, b), per adaptor and token kind, the mean cosine
  between the adaptor's outputs for the same (image, view) at side a and at side b, both in teacher space
  on the store's grid (the head's own resampling puts them on one grid). 1 means the adaptor says the same
  thing at both resolutions; a student that switches modes has low consistency between the sides where it
  switches.

Shape legend: B batch, C channels, h/w grid sides, M samples.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from stages.corpus.samples import render_samples
from stages.distill.config import DistillConfig
from stages.students.preprocess import student_pixels

SIZE_MULTIPLE = 32  # every student family accepts sides that are multiples of 32 (ViT: 16, E-RADIO: 32)


def trained_sizes(config: DistillConfig) -> dict[str, int]:
    """Store key -> the student side its partition trains at."""
    return {t: p.img_size for p in config.train_partitions for t in p.teachers}


def untrained_size(sizes: list[int]) -> int:
    """A side the student was not trained at: halfway between the two smallest trained sides, or 1.5x the
    side when there is one (rounded to a multiple of SIZE_MULTIPLE, never a trained side)."""
    s = sorted(set(sizes))
    guess = (s[0] + s[1]) / 2 if len(s) > 1 else 1.5 * s[0]
    side = max(SIZE_MULTIPLE, int(round(guess / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    while side in s:
        side += SIZE_MULTIPLE
    return side


def eval_sizes(config: DistillConfig, requested: list[int] | None) -> list[int]:
    """The sides to evaluate at: `requested` ([]: none), or automatic (None): a run of several sides gets
    each trained side and `untrained_size`; a single-side run none (its evaluation is the usual one)."""
    if requested is not None:
        return sorted(set(int(s) for s in requested))
    trained = sorted(set(trained_sizes(config).values()))
    if len(trained) < 2:
        return []
    return sorted(set(trained) | {untrained_size(trained)})


@torch.no_grad()
def _adaptor_outputs(student, heads, manifest: Any, normalizers: dict, pairs_B2: np.ndarray,
                     size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Every adaptor's outputs in teacher space for the samples at student side `size`."""
    device = next(student.parameters()).device
    out = student(student_pixels(torch.from_numpy(render_samples(manifest, pairs_B2, size)), device=device))
    result = {}
    for t, (summary_BC, patches_BhwC) in heads(out).items():
        kinds = {"patches": patches_BhwC}
        if summary_BC is not None:
            kinds["summary"] = summary_BC
        result[t] = {k: normalizers[t][k].invert(v.float().cpu()) for k, v in kinds.items()}
    return result


def consistency(student, heads, manifest: Any, normalizers: dict, pairs_M2: np.ndarray, *, sizes: list[int],
                batch_size: int) -> dict[str, dict[str, dict[str, float]]]:
    """{"a->b": {store: {kind: mean token cosine}}} for neighbouring sides a < b (see the module docstring)."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    sums: dict[str, dict[str, dict[str, float]]] = {f"{a}->{b}": {} for a, b in pairs}
    count: dict[tuple[str, str, str], int] = {}
    for lo in range(0, len(pairs_M2), batch_size):
        batch = pairs_M2[lo: lo + batch_size]
        outs = {s: _adaptor_outputs(student, heads, manifest, normalizers, batch, s) for s in sizes}
        for a, b in pairs:
            for t, kinds in outs[a].items():
                for kind, x in kinds.items():
                    cos = torch.nn.functional.cosine_similarity(x.reshape(-1, x.shape[-1]).double(),
                                                                outs[b][t][kind].reshape(-1, x.shape[-1]).double(), dim=1)
                    slot = sums[f"{a}->{b}"].setdefault(t, {})
                    slot[kind] = slot.get(kind, 0.0) + float(cos.sum())
                    key = (f"{a}->{b}", t, kind)
                    count[key] = count.get(key, 0) + cos.numel()
    return {p: {t: {k: v / count[(p, t, k)] for k, v in kinds.items()} for t, kinds in stores.items()}
            for p, stores in sums.items()}


def resolution_report(student, heads, stores: Any, normalizers: dict, pairs_M2: np.ndarray, *, sizes: list[int],
                      trained: list[int], batch_size: int, errors: Callable[[int], dict],
                      probe: Callable[[int], float] | None) -> dict[str, Any]:
    """metrics.json's "resolutions": the sides, per-side errors (and kNN accuracy), and consistency."""
    per_size = {}
    for size in sizes:
        errs = errors(size)
        per_size[str(size)] = {
            "trained": size in trained,
            "teachers": {t: {k: {"mse": v["mse"], "cos_mean": v["cos_mean"]} for k, v in kinds.items()}
                         for t, kinds in errs.items()},
            "knn_acc": None if probe is None else probe(size),
        }
    return {"sizes": sizes, "trained": trained, "untrained": [s for s in sizes if s not in trained],
            "per_size": per_size,
            "consistency": consistency(student, heads, stores.manifest, normalizers, pairs_M2, sizes=sizes,
                                       batch_size=batch_size),
            "consistency_measure": "mean token cosine between an adaptor's teacher-space outputs for the same "
                                   "(image, view) at two student sides, on the store's grid"}


def format_resolutions(res: dict[str, Any]) -> list[str]:
    """Lines `pipeline evaluate` / `pipeline demo` print for a multi-resolution evaluation."""
    lines = []
    for size, r in res["per_size"].items():
        errs = ", ".join(f"{t} {k} mse {v['mse']:.4g} cos {v['cos_mean']:.3f}" for t, kinds in r["teachers"].items()
                         for k, v in kinds.items())
        knn = "" if r["knn_acc"] is None else f"; kNN acc {r['knn_acc']:.3f}"
        lines.append(f"  at {size} px ({'trained' if r['trained'] else 'not trained'}): {errs}{knn}")
    for pair, stores in res["consistency"].items():
        lines.append(f"  consistency {pair} px: " + ", ".join(
            f"{t} {k} {v:.3f}" for t, kinds in stores.items() for k, v in kinds.items()))
    return lines
