"""How `pipeline evaluate --on` results read: flattened metric names for the report and one line per dataset.

Flattened names (``stages.evaluate.categories`` ranks some of them), per dataset ``<d>``:
``bench/<d>/knn_top1``, ``bench/<d>/linear_top1``, ``bench/<d>/zeroshot/<teacher>/top1``,
``bench/<d>/seg_probe_miou``, ``bench/<d>/seg_probe_pixel_acc``, ``bench/<d>/depth_delta1``,
``bench/<d>/depth_absrel``, ``bench/<d>/depth_rmse``, ``bench/<d>/normals_within_11``,
``bench/<d>/normals_mean_deg``; each teacher reference beside them as ``bench/<d>/teacher_<metric>/<teacher>``
(``teacher_zeroshot_top1/<teacher>`` for its own zero-shot; never ranked).
"""

from __future__ import annotations

from typing import Any

# (section of a bench result, key) -> flattened metric name
METRIC_NAMES: dict[tuple[str, str], str] = {
    ("", "knn_acc"): "knn_top1", ("", "linear_acc"): "linear_top1", ("", "zeroshot_top1"): "zeroshot_top1",
    ("seg", "miou"): "seg_probe_miou", ("seg", "pixel_acc"): "seg_probe_pixel_acc",
    ("depth", "delta1"): "depth_delta1", ("depth", "abs_rel"): "depth_absrel", ("depth", "rmse"): "depth_rmse",
    ("normals", "within_11_25"): "normals_within_11", ("normals", "mean_angle_deg"): "normals_mean_deg",
}


def _named(res: dict[str, Any]) -> dict[str, float]:
    """{flattened metric name (without the bench/<d>/ prefix): value} of one student or teacher result."""
    out = {}
    for (section, key), name in METRIC_NAMES.items():
        tree = res if not section else (res.get(section) or {})
        if isinstance(tree.get(key), (int, float)):
            out[name] = float(tree[key])
    return out


def flatten_bench(bench: dict[str, Any]) -> dict[str, float]:
    """``bench/<dataset>/<metric>`` -> value for every dataset of an eval/metrics.json's ``bench`` section."""
    flat: dict[str, float] = {}
    for d, res in bench.items():
        flat.update({f"bench/{d}/{name}": v for name, v in _named(res).items()})
        for t, z in (res.get("zeroshot") or {}).items():
            flat[f"bench/{d}/zeroshot/{t}/top1"] = float(z["top1"])
        for t, ref in (res.get("teacher_refs") or {}).items():
            flat.update({f"bench/{d}/teacher_{name}/{t}": v for name, v in _named(ref).items()})
    return flat


def _fmt(res: dict[str, Any]) -> str:
    parts = []
    if "knn_acc" in res:
        parts.append(f"kNN acc {res['knn_acc']:.3f}")
    if "linear_acc" in res:
        parts.append(f"linear acc {res['linear_acc']:.3f}")
    for t, z in (res.get("zeroshot") or {}).items():
        parts.append(f"zero-shot {t} {z['top1']:.3f}")
    if "seg" in res:
        parts.append(f"mIoU {res['seg']['miou']:.3f}")
    if "depth" in res:
        parts.append(f"depth AbsRel {res['depth']['abs_rel']:.3f} δ1 {res['depth']['delta1']:.3f}")
    if "normals" in res:
        parts.append(f"normals {res['normals']['mean_angle_deg']:.1f}° mean, "
                     f"{100 * res['normals']['within_11_25']:.1f}% < 11.25°")
    return ", ".join(parts)


def bench_lines(bench: dict[str, Any]) -> list[str]:
    """One line per dataset (the student), one per teacher reference, one per skipped item."""
    lines = []
    for name, res in bench.items():
        lines.append(f"bench {name} ({res['layout']}, {res['num_train']} train / {res['num_val']} val): {_fmt(res)}")
        for t, ref in (res.get("teacher_refs") or {}).items():
            zs = f", zero-shot {ref['zeroshot_top1']:.3f}" if "zeroshot_top1" in ref else ""
            text = _fmt({k: v for k, v in ref.items() if k != "zeroshot"}) + zs
            lines.append(f"  teacher {t}: {text.lstrip(', ')}")
        for what, why in (res.get("skipped") or {}).items():
            lines.append(f"  skipped {what}: {why}")
    return lines


def bench_protocol_lines(evals: dict[str, dict[str, Any]]) -> list[str]:
    """The report's section on the evaluation datasets: what each was scored with, and the teachers'
    references (the same for every run: computed once per dataset). Empty when no run was evaluated --on."""
    datasets: dict[str, dict[str, Any]] = {}
    for ev in evals.values():
        for name, res in (ev.get("bench") or {}).items():
            datasets.setdefault(name, res)
    if not datasets:
        return []
    lines = ["## Evaluation datasets (`pipeline evaluate --on`)", "",
             "Metrics `bench/<dataset>/...` in the table above. Classification: kNN (cosine, τ = 0.07, k = 20) on "
             "the concatenated student summary tokens, train split as the bank, val as queries; zero-shot through "
             "each CLIP teacher's stored text embeddings of the class names; a mini-batch linear classifier. Dense "
             "probes: BatchNorm + 1×1 conv on the student's backbone features, trained on mini-batches of random "
             "crops of cached whole-image features, scored by whole-image inference at full target resolution "
             "(no sliding window): mIoU with ignore 255; depth AbsRel and δ < 1.25; normals mean angular error "
             "and share within 11.25° (Probe 3D).", ""]
    for name, res in datasets.items():
        lines.append(f"- `{name}` ({res['layout']}, {res['num_train']} train / {res['num_val']} val): probes "
                     f"{', '.join(res['probes'])}")
        for t, ref in (res.get("teacher_refs") or {}).items():
            zs = f", zero-shot {ref['zeroshot_top1']:.3f}" if "zeroshot_top1" in ref else ""
            lines.append(f"  - teacher reference {t}: {(_fmt(ref) + zs).lstrip(', ')}")
        for what, why in (res.get("skipped") or {}).items():
            lines.append(f"  - skipped {what}: {why}")
    return lines + [""]
