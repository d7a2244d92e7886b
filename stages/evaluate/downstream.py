"""Downstream evaluation of an exported student against its teachers' stored outputs (AM-RADIO, arXiv
2312.06709: zero-shot classification, dense linear probes, open-vocabulary segmentation; the PHI-S
ranking's Classification and Segmentation categories, arXiv 2410.01680).

Everything comes from the exported student (``stages.distill.exported.load_exported``: teacher-space
adaptors) and the stores: stored summaries / patches of view 0 (the full image) are the teacher
references, stored text embeddings and projections (``pipeline extract-text``) give the joint space. No
teacher is built.

* Zero-shot, per CLIP-family (open_clip) teacher of the run: the student's summary adaptor vs the text
  embeddings of the classes → ``top1``; the teacher's stored summary → ``teacher_top1``; ``agreement``.
* Linear probe: the student's backbone features (before any head) → ``linear_miou``; each teacher's
  stored patches → ``teacher_linear_miou[teacher]``.
* Open vocabulary, per open_clip teacher with a projection: the student's feature adaptor for that
  teacher through the stored ``proj`` → ``openvocab_miou[teacher]``; the stored patches →
  ``teacher_openvocab_miou[teacher]``. The stored patches are the last block's tokens after ln_post, so
  this is MaskCLIP without its last-block value-path trick (a store of final tokens cannot redo it).

Shape legend: N images, C channels, h/w grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.corpus.samples import render_samples
from stages.evaluate.segmentation import linear_probe_miou, open_vocab_miou, read_mask
from stages.evaluate.zeroshot import zeroshot_scores
from stages.prompts import prompt_set
from stages.teachers.spec import Family
from store_schema import text_store


@dataclass(frozen=True)
class DownstreamConfig:
    """What to evaluate. A None class file / masks folder skips that evaluation (the result says so)."""

    zeroshot_classes: Path | None = None
    zeroshot_templates: str = "imagenet"
    seg_masks: Path | None = None
    seg_classes: Path | None = None
    seg_templates: str = "segmentation"
    seg_probe_steps: int = 100
    seg_probe_lr: float = 2e-2
    seed: int = 0
    zeroshot_teacher: str | None = None  # the zero-shot teacher the ranking counts (None: the first with text)


@torch.no_grad()
def _student_view0(model: Any, manifest: Any, ids_N: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Student outputs on view 0: backbone features and per-adaptor (summary, features), numpy."""
    out: dict[str, list] = {"backbone": []}
    device = next(model.parameters()).device
    for lo in range(0, len(ids_N), batch_size):
        ids_B = ids_N[lo : lo + batch_size]
        pairs_B2 = np.stack([ids_B, np.zeros_like(ids_B)], 1)
        res = model(model.pixels(render_samples(manifest, pairs_B2, model.img_size), device=device))
        out["backbone"].append(res.backbone_features_BhwC.float().cpu().numpy())
        for name, a in res.adaptors.items():
            s = None if a.summary_BC is None else a.summary_BC.float().cpu().numpy()
            out.setdefault(name, []).append((s, a.features_BhwC.float().cpu().numpy()))
    result: dict[str, Any] = {"backbone": np.concatenate(out["backbone"])}
    for name in model.adaptor_names:
        parts = out[name]
        result[name] = (None if parts[0][0] is None else np.concatenate([p[0] for p in parts]),
                        np.concatenate([p[1] for p in parts]))
    return result


def _stored_view0(store: Any, ids_N: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    store.require_stored(ids_N, reader="evaluation")  # a lost chunk would read as zeros
    s_NVC, p_NVhwC, _ = store.read_images(ids_N)
    p_NhwC = np.asarray(p_NVhwC[:, 0], np.float32)
    frames = store.frames_NV4
    if frames is not None:  # a teacher with its own resize rule: its map brought onto the view (as the masks)
        import torch

        from stages.teachers.resize import teacher_map_in_view

        f_N4 = torch.from_numpy(frames[np.asarray(ids_N, np.int64), 0].astype(np.float32))
        p_NhwC = teacher_map_in_view(torch.from_numpy(p_NhwC), f_N4, p_NhwC.shape[1:3]).numpy()
    return (None if s_NVC is None else np.asarray(s_NVC[:, 0], np.float32)), p_NhwC


def _usable_ids(manifest: Any, stores: dict[str, Any], ids: list[int]) -> np.ndarray:
    """Ids that are ok in the manifest and valid in view 0 of every store."""
    ids_N = np.array(sorted(i for i in ids if manifest.ok_N[i]), np.int64)
    if len(ids_N) == 0:
        return ids_N
    keep = np.ones(len(ids_N), bool)
    for store in stores.values():
        keep &= np.asarray(store.valid.oindex[ids_N, 0], bool)
    return ids_N[keep]


def clip_teachers(stores: dict[str, Any]) -> list[str]:
    """Teachers of the run with an open_clip tower (a text tower exists for them)."""
    return [t for t, s in stores.items() if s.spec.family is Family.OPEN_CLIP]


def ranked_zeroshot_teacher(stores: dict[str, Any], requested: str | None = None) -> str:
    """The one teacher whose zero-shot the PHI-S ranking counts (the paper: DFN CLIP's): ``requested`` when
    given, else the first CLIP-family teacher, in the run's teacher order, whose store holds text
    embeddings (``pipeline extract-text``). ValueError naming the valid choices otherwise."""
    valid = [t for t in clip_teachers(stores) if text_store.list_prompt_sets(stores[t].path)]
    if requested is not None:
        if requested not in valid:
            raise ValueError(f"zero-shot teacher {requested!r} is not a CLIP-family teacher of this run with text "
                             f"embeddings; valid: {', '.join(valid) or 'none'}")
        return requested
    if not valid:
        raise ValueError(f"no CLIP-family teacher of this run ({', '.join(clip_teachers(stores)) or 'none'}) has "
                         "text embeddings: run `pipeline extract-text` first")
    return valid[0]


def zeroshot_eval(model: Any, manifest: Any, stores: dict[str, Any], labels: dict[str, str], cfg: DownstreamConfig,
                  *, split: str, batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """({teacher: {top1, teacher_top1, agreement}}, {teacher: {num_images, num_classes, prompt_hash}}) on
    `split`: the metrics, and what they were measured on (kept apart so reports flatten only metrics)."""
    prompts = prompt_set(cfg.zeroshot_classes, cfg.zeroshot_templates)
    index = {label: k for k, label in enumerate(prompts.labels)}
    uri_id = {u: i for i, u in enumerate(manifest.uris)}
    unknown = sorted({lab for u, lab in labels.items() if u in uri_id and lab not in index})
    if unknown:
        raise ValueError(f"probe labels {unknown[:5]} are not classes of {cfg.zeroshot_classes} "
                         f"({list(prompts.labels)[:10]})")
    ids = [uri_id[u] for u in labels if u in uri_id and manifest.split[uri_id[u]] == split]
    ids_N = _usable_ids(manifest, stores, ids)
    if len(ids_N) == 0:
        raise ValueError(f"no labeled, usable {split} images for zero-shot classification")
    y_N = np.array([index[labels[manifest.uris[i]]] for i in ids_N])
    teachers = clip_teachers(stores)
    texts = {t: text_store.read_text_embeddings(stores[t].path, prompts, classes_file=cfg.zeroshot_classes)
             for t in teachers}  # every missing prompt set is an error before the student runs
    student = _student_view0(model, manifest, ids_N, batch_size)
    out, info = {}, {}
    for t in teachers:
        teacher_NC, _ = _stored_view0(stores[t], ids_N)
        out[t] = zeroshot_scores(student[t][0], teacher_NC, texts[t], y_N)
        info[t] = {"num_images": int(len(ids_N)), "num_classes": len(prompts.labels),
                   "prompt_hash": prompts.hash[:16]}
    return out, info


def _seg_set(manifest: Any, masks_dir: Path) -> dict[int, Path]:
    """Manifest image id -> mask path for every image with a mask <masks_dir>/<uri without suffix>.png."""
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"segmentation masks folder {masks_dir} does not exist")
    found = {}
    for i, uri in enumerate(manifest.uris):
        path = masks_dir / Path(uri).with_suffix(".png")
        if path.is_file():
            found[i] = path
    if not found:
        raise ValueError(f"no mask in {masks_dir} matches a manifest image (expected <uri without suffix>.png, "
                         f"e.g. {Path(manifest.uris[0]).with_suffix('.png')})")
    return found


def seg_eval(model: Any, manifest: Any, stores: dict[str, Any], cfg: DownstreamConfig, *, split: str,
             batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(linear-probe and open-vocabulary mIoU of the student and of every teacher's stored features,
    {num_train, num_val, num_classes, prompt_hash})."""
    prompts = prompt_set(cfg.seg_classes, cfg.seg_templates)
    L = len(prompts.labels)
    masks = _seg_set(manifest, cfg.seg_masks)
    ids_split = {s: _usable_ids(manifest, stores, [i for i in masks if manifest.split[i] == s])
                 for s in ("train", split)}
    if len(ids_split["train"]) == 0 or len(ids_split[split]) == 0:
        raise ValueError(f"segmentation set has {len(ids_split['train'])} usable train and "
                         f"{len(ids_split[split])} {split} images; need both")
    y = {s: [read_mask(masks[int(i)], L) for i in ids] for s, ids in ids_split.items()}
    teachers = clip_teachers(stores)
    texts = {t: text_store.read_text_embeddings(stores[t].path, prompts, classes_file=cfg.seg_classes)
             for t in teachers}
    projs = {t: text_store.read_projection(stores[t].path) for t in teachers}
    student = {s: _student_view0(model, manifest, ids, batch_size) for s, ids in ids_split.items()}
    stored = {s: {t: _stored_view0(store, ids) for t, store in stores.items()} for s, ids in ids_split.items()}
    probe = dict(steps=cfg.seg_probe_steps, lr=cfg.seg_probe_lr, seed=cfg.seed)
    info = {"num_train": int(len(ids_split["train"])), "num_val": int(len(ids_split[split])), "num_classes": L,
            "prompt_hash": prompts.hash[:16]}
    out: dict[str, Any] = {
        "linear_miou": linear_probe_miou(student["train"]["backbone"], y["train"], student[split]["backbone"],
                                         y[split], L, **probe),
        "teacher_linear_miou": {t: linear_probe_miou(stored["train"][t][1], y["train"], stored[split][t][1],
                                                     y[split], L, **probe) for t in stores},
        "openvocab_miou": {}, "teacher_openvocab_miou": {},
    }
    for t in teachers:
        proj = projs[t]
        out["openvocab_miou"][t] = open_vocab_miou(proj.stored_patches_to_joint(student[split][t][1]), texts[t],
                                                   y[split])
        out["teacher_openvocab_miou"][t] = open_vocab_miou(proj.stored_patches_to_joint(stored[split][t][1]),
                                                           texts[t], y[split])
    return out, info


def flatten_downstream(ev: dict[str, Any]) -> dict[str, float]:
    """Flattened metric names of the downstream results in an eval/metrics.json (agreed report names):
    ranked ``zeroshot/<t>/top1``, ``seg/linear_miou``, ``seg/openvocab_miou/<t>``; references beside them
    (``zeroshot/<t>/teacher_top1``, ``zeroshot/<t>/agreement``, ``seg/teacher_linear_miou/<t>``,
    ``seg/teacher_openvocab_miou/<t>``)."""
    flat: dict[str, float] = {}
    for t, z in (ev.get("zeroshot") or {}).items():
        for key in ("top1", "teacher_top1", "agreement"):
            flat[f"zeroshot/{t}/{key}"] = float(z[key])
    seg = ev.get("seg") or {}
    if seg:
        flat["seg/linear_miou"] = float(seg["linear_miou"])
        for t, v in seg["teacher_linear_miou"].items():
            flat[f"seg/teacher_linear_miou/{t}"] = float(v)
        for t, v in seg["openvocab_miou"].items():
            flat[f"seg/openvocab_miou/{t}"] = float(v)
        for t, v in seg["teacher_openvocab_miou"].items():
            flat[f"seg/teacher_openvocab_miou/{t}"] = float(v)
    return flat
