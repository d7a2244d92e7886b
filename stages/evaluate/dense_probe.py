"""Dense linear probes trained by mini-batches from features on disk: segmentation, depth, surface normals.

* **Semantic segmentation**, the "linear" protocol (DINOv2, Oquab et al. arXiv 2304.07193; as AM-RADIO
  arXiv 2312.06709 and PHI-S arXiv 2410.01680 report ADE20k / VOC): BatchNorm + 1×1 convolution on frozen
  features, logits bilinearly upsampled to the target, cross-entropy with ignore index 255; mIoU with
  ignore 255 on the val split, each val image scored whole at its full mask resolution ("whole image"
  inference, no sliding window).
* **Depth** and **surface normals**, as Probe 3D reports them (El Banani et al., CVPR 2024, "Probing the
  3D awareness of visual foundation models"): the same linear head regressing metric depth (MSE on valid
  pixels; AbsRel and δ < 1.25) or a unit normal (1 − cosine; mean angular error and the share of pixels
  within 11.25°). Probe 3D's own depth probe is a multiscale head over binned depth; the linear head here
  is its linear variant, on the last layer only.

Training reads mini-batches of ``batch_size`` images from a feature source (the run's feature cache or a
teacher store, both on disk: ``stages.evaluate.feature_cache``) and the dataset's training targets
(resized once to a fixed side, ``stages.evaluate.bench_targets``), so memory is one batch, never the
training set. Each sample is a random crop (``crop`` of the feature grid per side, random position,
random horizontal flip except for normals, whose x would flip while the cached features' does not) of the features of the whole image, computed once at the student's input
resolution, and the matching region of its target. AdamW, cosine learning-rate decay over
``iterations``. Probes run with ``threads`` torch threads (default 1: a probe's per-iteration tensors are
small, and on this 2-core machine under load two threads made the demo's probes 4x slower in CPU time
and even the ADE20k-sized iteration slower; more threads pay off only on large crops and idle cores).
The BatchNorm statistics are the per-channel mean and variance of the training features
(estimated once from ``stats_images`` training images, streamed) and stay fixed while the affine part
and the convolution train: the probe is trained as exactly the linear map it is evaluated as (per-batch
statistics in training mode would differ from the running ones used at evaluation, which leaves a
floor under the error of a regression probe).

Shape legend: B batch, h/w feature grid (c crop), C channels, T target side, H/W full-resolution sides,
L classes, O probe outputs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from stages.evaluate.segmentation import IGNORE_INDEX, LinearSegHead, confusion

TASKS = ("seg", "depth", "normals")
MIN_DEPTH = 1e-3  # metres: predictions are clamped here before AbsRel / δ (a linear head can go negative)
NORMAL_THRESHOLD_DEG = 11.25
DELTA1 = 1.25


@dataclass(frozen=True)
class ProbeConfig:
    """How a dense probe is trained (iterations of mini-batches of random crops)."""

    iterations: int = 2000
    batch_size: int = 16
    stats_images: int = 256  # training images the BatchNorm statistics are estimated from
    threads: int | None = 1  # torch threads while a probe trains / scores (None: leave torch's setting)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    crop: float = 0.75  # crop side, as a fraction of the feature grid side
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError(f"probe iterations and batch_size must be >= 1, got {self.iterations}, "
                             f"{self.batch_size}")
        if not 0.0 < self.crop <= 1.0:
            raise ValueError(f"probe crop must be in (0, 1], got {self.crop}")
        if self.lr <= 0:
            raise ValueError(f"probe lr must be > 0, got {self.lr}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"probe threads must be >= 1 or None, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "batch_size": self.batch_size, "stats_images": self.stats_images,
                "lr": self.lr,
                "weight_decay": self.weight_decay, "crop": self.crop, "seed": self.seed}


def _outputs(task: str, num_classes: int | None) -> int:
    if task not in TASKS:
        raise ValueError(f"unknown dense task {task!r}; valid tasks: {', '.join(TASKS)}")
    if task == "seg":
        if not num_classes or num_classes < 1:
            raise ValueError("a segmentation probe needs the number of classes")
        return num_classes
    return 1 if task == "depth" else 3


def _crop_boxes(rng: np.random.Generator, B: int, grid: tuple[int, int], crop: float) -> np.ndarray:
    """[B, 4] (y0, x0, y1, x1) in feature cells."""
    h, w = grid
    ch, cw = max(1, round(crop * h)), max(1, round(crop * w))
    y0, x0 = rng.integers(0, h - ch + 1, B), rng.integers(0, w - cw + 1, B)
    return np.stack([y0, x0, y0 + ch, x0 + cw], 1)


def _target_boxes(boxes_B4: np.ndarray, grid: tuple[int, int], side: int) -> tuple[np.ndarray, int, int]:
    """(target top-left corners [B, 2], crop height, width) in target pixels: one size for the whole batch
    (the crops' cell size × side / grid, rounded), so the batch is scored in one op; the corner is the
    crop's, rounded (exact when side is a multiple of the grid)."""
    h, w = grid
    th = max(1, round((boxes_B4[0, 2] - boxes_B4[0, 0]) * side / h))
    tw = max(1, round((boxes_B4[0, 3] - boxes_B4[0, 1]) * side / w))
    ty0 = np.minimum(np.round(boxes_B4[:, 0] * side / h).astype(np.int64), side - th)
    tx0 = np.minimum(np.round(boxes_B4[:, 1] * side / w).astype(np.int64), side - tw)
    return np.stack([ty0, tx0], 1), th, tw


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with n torch intra-op threads (None: unchanged), restoring the setting after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _fixed_batchnorm(head: LinearSegHead, read_features: Callable[[np.ndarray], np.ndarray], ids: np.ndarray,
                     batch_size: int) -> None:
    """Set the head's BatchNorm statistics from the features of `ids` (float64 sums, batch by batch)."""
    C = head.bn.num_features
    n, s1, s2 = 0, torch.zeros(C, dtype=torch.float64), torch.zeros(C, dtype=torch.float64)
    for lo in range(0, len(ids), batch_size):
        x_PC = torch.as_tensor(read_features(ids[lo : lo + batch_size]), dtype=torch.float64).reshape(-1, C)
        n, s1, s2 = n + len(x_PC), s1 + x_PC.sum(0), s2 + (x_PC * x_PC).sum(0)
    mean = s1 / n
    head.bn.running_mean.copy_(mean.float())
    head.bn.running_var.copy_((s2 / n - mean * mean).clamp_min(0.0).float())


def _loss(task: str, out_BOHW: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed loss, counted pixels) of a batch at its target crops."""
    if task == "seg":
        y_BHW = target.long()
        return F.cross_entropy(out_BOHW, y_BHW, ignore_index=IGNORE_INDEX, reduction="sum"), int(
            (y_BHW != IGNORE_INDEX).sum())
    if task == "depth":
        valid = target > 0
        return ((out_BOHW[:, 0] - target) ** 2)[valid].sum(), int(valid.sum())
    valid = target.norm(dim=-1) > 0.5  # unit normals; zero vectors mark pixels without one
    cos_BHW = (F.normalize(out_BOHW, dim=1).permute(0, 2, 3, 1) * target).sum(-1)
    return (1.0 - cos_BHW)[valid].sum(), int(valid.sum())


def train_dense_probe(read_features: Callable[[np.ndarray], np.ndarray],
                      read_targets: Callable[[np.ndarray], np.ndarray], train_ids: np.ndarray, *, task: str,
                      grid: tuple[int, int], channels: int, target_side: int, cfg: ProbeConfig,
                      num_classes: int | None = None) -> LinearSegHead:
    """Train BatchNorm + 1×1 conv on random crops of mini-batches; returns the head in eval mode.

    read_features(ids) -> float32 [B, h, w, C]; read_targets(ids) -> [B, T, T] class ids (seg, uint8), metric
    depth (float32, 0 = no depth) or [B, T, T, 3] unit normals (float32, 0 = none); ids sorted ascending.
    """
    train_ids = np.asarray(train_ids, np.int64)
    if len(train_ids) == 0:
        raise ValueError(f"the {task} probe has no training images")
    with torch_threads(cfg.threads):
        return _train(read_features, read_targets, train_ids, task=task, grid=grid, channels=channels,
                      target_side=target_side, cfg=cfg, num_classes=num_classes)


def _train(read_features: Callable[[np.ndarray], np.ndarray], read_targets: Callable[[np.ndarray], np.ndarray],
           train_ids: np.ndarray, *, task: str, grid: tuple[int, int], channels: int, target_side: int,
           cfg: ProbeConfig, num_classes: int | None) -> LinearSegHead:
    rng = np.random.default_rng(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = LinearSegHead(channels, _outputs(task, num_classes))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: 0.5 * (1.0 + math.cos(math.pi * it / cfg.iterations)))
    B = min(cfg.batch_size, len(train_ids))
    stats_ids = np.sort(rng.choice(train_ids, min(cfg.stats_images, len(train_ids)), replace=False))
    _fixed_batchnorm(head, read_features, stats_ids, B)
    head.eval()  # BatchNorm with the fixed statistics; its affine part and the conv still train
    for _ in range(cfg.iterations):
        ids_B = np.sort(rng.choice(train_ids, B, replace=False))
        x_BhwC, y_B = read_features(ids_B), read_targets(ids_B)
        boxes_B4, flips_B = _crop_boxes(rng, B, grid, cfg.crop), rng.random(B) < 0.5
        corners_B2, th, tw = _target_boxes(boxes_B4, grid, target_side)
        crops, targets = [], []
        for b in range(B):
            y0, x0, y1, x1 = boxes_B4[b]
            ty0, tx0 = corners_B2[b]
            x_hwC, t = x_BhwC[b, y0:y1, x0:x1], y_B[b, ty0 : ty0 + th, tx0 : tx0 + tw]
            if flips_B[b] and task != "normals":  # a mirrored normal would need mirrored features too
                x_hwC, t = x_hwC[:, ::-1], t[:, ::-1]
            crops.append(x_hwC)
            targets.append(t)
        out_BOhw = head(torch.as_tensor(np.ascontiguousarray(np.stack(crops)), dtype=torch.float32))
        out_BOHW = F.interpolate(out_BOhw, size=(th, tw), mode="bilinear", align_corners=False)
        y_BHW = torch.as_tensor(np.ascontiguousarray(np.stack(targets)))
        total, count = _loss(task, out_BOHW, y_BHW if task == "seg" else y_BHW.float())
        opt.zero_grad()
        (total / max(count, 1)).backward()
        opt.step()
        sched.step()
    return head.eval()


@torch.no_grad()
def predict_full(head: LinearSegHead, feats_hwC: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """The head's outputs [O, H, W] for one whole image, bilinearly upsampled to its full resolution."""
    out_1Ohw = head(torch.as_tensor(np.asarray(feats_hwC, np.float32))[None])
    return F.interpolate(out_1Ohw, size=size, mode="bilinear", align_corners=False)[0]


class SegScore:
    """mIoU with ignore 255, accumulated image by image (a confusion matrix, never all masks at once)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.conf_LL = np.zeros((num_classes, num_classes), np.int64)

    def add(self, out_LHW: torch.Tensor, mask_HW: np.ndarray) -> None:
        self.conf_LL += confusion(out_LHW.argmax(0).numpy(), mask_HW, self.num_classes)

    def result(self) -> dict[str, Any]:
        inter_L = np.diag(self.conf_LL).astype(np.float64)
        union_L = self.conf_LL.sum(0) + self.conf_LL.sum(1) - inter_L
        present = union_L > 0
        if not present.any():
            raise ValueError("every val pixel is ignored: no IoU to average")
        return {"miou": float(np.mean(inter_L[present] / union_L[present])),
                "pixel_acc": float(inter_L.sum() / max(self.conf_LL.sum(), 1))}


class DepthScore:
    """AbsRel = mean |d̂ − d| / d and δ1 = share of max(d̂/d, d/d̂) < 1.25 over pixels with depth (d > 0)."""

    def __init__(self) -> None:
        self.abs_rel, self.delta1, self.rmse2, self.n = 0.0, 0, 0.0, 0

    def add(self, out_1HW: torch.Tensor, depth_HW: np.ndarray) -> None:
        gt = torch.as_tensor(depth_HW, dtype=torch.float64)
        valid = gt > 0
        pred, gt = out_1HW[0].double().clamp_min(MIN_DEPTH)[valid], gt[valid]
        self.abs_rel += float(((pred - gt).abs() / gt).sum())
        self.delta1 += int((torch.maximum(pred / gt, gt / pred) < DELTA1).sum())
        self.rmse2 += float(((pred - gt) ** 2).sum())
        self.n += int(valid.sum())

    def result(self) -> dict[str, Any]:
        if self.n == 0:
            raise ValueError("no val pixel has a depth: nothing to score")
        return {"abs_rel": self.abs_rel / self.n, "delta1": self.delta1 / self.n, "rmse": math.sqrt(self.rmse2 / self.n)}


class NormalScore:
    """Mean angular error (degrees) and the share of pixels within 11.25° over pixels with a normal."""

    def __init__(self) -> None:
        self.angle_sum, self.within, self.n = 0.0, 0, 0

    def add(self, out_3HW: torch.Tensor, normals_HW3: np.ndarray) -> None:
        gt = torch.as_tensor(normals_HW3, dtype=torch.float64)
        valid = gt.norm(dim=-1) > 0.5
        pred = F.normalize(out_3HW.double(), dim=0).permute(1, 2, 0)[valid]
        cos = (pred * F.normalize(gt[valid], dim=-1)).sum(-1).clamp(-1.0, 1.0)
        deg = torch.rad2deg(torch.acos(cos))
        self.angle_sum += float(deg.sum())
        self.within += int((deg < NORMAL_THRESHOLD_DEG).sum())
        self.n += int(valid.sum())

    def result(self) -> dict[str, Any]:
        if self.n == 0:
            raise ValueError("no val pixel has a surface normal: nothing to score")
        return {"mean_angle_deg": self.angle_sum / self.n, "within_11_25": self.within / self.n}


def score_dense_probe(head: LinearSegHead, read_features: Callable[[np.ndarray], np.ndarray],
                      full_targets: Iterable[tuple[int, np.ndarray]], *, task: str,
                      num_classes: int | None = None, threads: int | None = 1) -> dict[str, Any]:
    """Score a trained head on val images one at a time at full resolution.

    full_targets yields (image id, full-resolution target): a mask [H, W] (seg), metric depth [H, W] or
    unit normals [H, W, 3]."""
    score: Any = SegScore(_outputs(task, num_classes)) if task == "seg" else (
        DepthScore() if task == "depth" else NormalScore())
    n = 0
    with torch_threads(threads):
        for i, target in full_targets:
            score.add(predict_full(head, read_features(np.array([i]))[0], target.shape[:2]), target)
            n += 1
    if n == 0:
        raise ValueError(f"the {task} probe has no val images to score")
    return {**score.result(), "num_val": n, "inference": "whole image at full target resolution"}
