"""Semantic segmentation from frozen dense features: the linear probe and open-vocabulary labelling.

* **Linear probe** ("linear" protocol of DINOv2, Oquab et al. arXiv 2304.07193, as AM-RADIO arXiv
  2312.06709 reports ADE20k / VOC): BatchNorm + 1×1 convolution on the frozen features, logits bilinearly
  upsampled to the mask's resolution, cross-entropy with ignore index 255, trained on the train split;
  mean IoU on the val split at full mask resolution. To keep training cheap, the training targets are the
  masks resized (nearest) to at most TRAIN_UPSAMPLE × the feature grid.
* **Open vocabulary** (MaskCLIP, Zhou et al. arXiv 2112.01071): no training; each patch's features in a
  CLIP teacher's joint space are compared with the class text embeddings, the cosine logits upsampled
  bilinearly to the mask, and each pixel takes the best class.

mIoU: per class, intersection over union accumulated over all val pixels (ignored pixels excluded),
averaged over the classes that occur in the ground truth or the prediction.

Shape legend: N images, h/w feature grid, H/W mask sides, C channels, L classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IGNORE_INDEX = 255
TRAIN_UPSAMPLE = 2  # training targets: masks resized (nearest) to at most 2× the feature grid per side


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """uint8 [H, W] label mask from a PNG (palette or grey); values must be < num_classes or 255."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P"):
            raise ValueError(f"mask {path} has mode {img.mode}; expected a single-channel (L or P) PNG of class ids")
        mask_HW = np.array(img, dtype=np.uint8)
    bad = np.unique(mask_HW[(mask_HW >= num_classes) & (mask_HW != IGNORE_INDEX)])
    if bad.size:
        raise ValueError(f"mask {path} holds values {bad[:5].tolist()} outside the {num_classes} classes "
                         f"(0..{num_classes - 1}) and the ignore index {IGNORE_INDEX}")
    return mask_HW


def confusion(pred_HW: np.ndarray, target_HW: np.ndarray, num_classes: int) -> np.ndarray:
    """[L, L] counts (row = truth, column = prediction) over non-ignored pixels."""
    keep = target_HW != IGNORE_INDEX
    idx = target_HW[keep].astype(np.int64) * num_classes + pred_HW[keep].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou(preds: list[np.ndarray], targets: list[np.ndarray], num_classes: int) -> tuple[float, list[float | None]]:
    """(mean IoU, per-class IoU or None for a class absent from truth and prediction)."""
    if len(preds) != len(targets) or not preds:
        raise ValueError(f"need equally many predictions and masks, at least one; got {len(preds)}, {len(targets)}")
    conf_LL = sum(confusion(p, t, num_classes) for p, t in zip(preds, targets))
    inter_L = np.diag(conf_LL).astype(np.float64)
    union_L = conf_LL.sum(0) + conf_LL.sum(1) - inter_L
    iou = [float(i / u) if u > 0 else None for i, u in zip(inter_L, union_L)]
    present = [v for v in iou if v is not None]
    if not present:
        raise ValueError("every pixel is ignored: no IoU to average")
    return float(np.mean(present)), iou


def upsample_logits(logits_BLhw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits_BLhw, size=size, mode="bilinear", align_corners=False)


class LinearSegHead(nn.Module):
    """BatchNorm2d + 1×1 conv: per-patch class logits from frozen features."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, num_classes, kernel_size=1)

    def forward(self, feats_BhwC: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(feats_BhwC.permute(0, 3, 1, 2)))  # [B, L, h, w]


def training_target(mask_HW: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The mask, resized (nearest) to at most TRAIN_UPSAMPLE × grid per side."""
    side = (min(mask_HW.shape[0], TRAIN_UPSAMPLE * grid[0]), min(mask_HW.shape[1], TRAIN_UPSAMPLE * grid[1]))
    if side == mask_HW.shape:
        return mask_HW
    return np.array(Image.fromarray(mask_HW).resize((side[1], side[0]), Image.NEAREST))


def _by_mask_size(masks: list[np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(masks):
        groups.setdefault(tuple(m.shape), []).append(i)
    return {k: np.array(v) for k, v in groups.items()}


def train_linear_probe(feats_NhwC: np.ndarray, masks: list[np.ndarray], num_classes: int, *, steps: int = 100,
                       lr: float = 2e-2, seed: int = 0) -> LinearSegHead:
    """Fit the linear head full-batch (AdamW) on frozen features and their masks; returns it in eval mode."""
    x_NhwC = torch.as_tensor(np.asarray(feats_NhwC, np.float32))
    if x_NhwC.ndim != 4 or len(masks) != len(x_NhwC):
        raise ValueError(f"need features [N, h, w, C] and N masks, got {tuple(x_NhwC.shape)} and {len(masks)}")
    masks = [training_target(m, tuple(x_NhwC.shape[1:3])) for m in masks]
    groups = {size: (idx, torch.as_tensor(np.stack([masks[i] for i in idx]).astype(np.int64)))
              for size, idx in _by_mask_size(masks).items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = LinearSegHead(x_NhwC.shape[-1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    head.train()
    for _ in range(steps):
        opt.zero_grad()
        logits_NLhw = head(x_NhwC)  # BatchNorm statistics over the whole train set
        loss = sum(F.cross_entropy(upsample_logits(logits_NLhw[idx], size), y, ignore_index=IGNORE_INDEX,
                                   reduction="sum") for size, (idx, y) in groups.items())
        n_pix = sum(int((y != IGNORE_INDEX).sum()) for _, y in groups.values())
        (loss / max(n_pix, 1)).backward()
        opt.step()
    return head.eval()


@torch.no_grad()
def predict_linear(head: LinearSegHead, feats_NhwC: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Per-image predicted masks at the given sizes."""
    logits_NLhw = head(torch.as_tensor(np.asarray(feats_NhwC, np.float32)))
    return [upsample_logits(logits_NLhw[i : i + 1], s)[0].argmax(0).numpy().astype(np.uint8)
            for i, s in enumerate(sizes)]


def linear_probe_miou(train_NhwC: np.ndarray, train_masks: list[np.ndarray], val_NhwC: np.ndarray,
                      val_masks: list[np.ndarray], num_classes: int, *, steps: int = 100, lr: float = 2e-2,
                      seed: int = 0) -> float:
    """mIoU on val of a linear head trained on train."""
    head = train_linear_probe(train_NhwC, train_masks, num_classes, steps=steps, lr=lr, seed=seed)
    preds = predict_linear(head, val_NhwC, [m.shape for m in val_masks])
    return miou(preds, val_masks, num_classes)[0]


@torch.no_grad()
def predict_open_vocab(joint_NhwC: np.ndarray, text_LC: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """MaskCLIP-style masks: per-patch cosine with each class text embedding, upsampled, argmax."""
    x_NhwC = F.normalize(torch.as_tensor(np.asarray(joint_NhwC, np.float32)), dim=-1)
    t_LC = F.normalize(torch.as_tensor(np.asarray(text_LC, np.float32)), dim=-1)
    if x_NhwC.shape[-1] != t_LC.shape[-1]:
        raise ValueError(f"joint features have {x_NhwC.shape[-1]} channels, text embeddings {t_LC.shape[-1]}")
    logits_NLhw = torch.einsum("nhwc,lc->nlhw", x_NhwC, t_LC)
    return [upsample_logits(logits_NLhw[i : i + 1], s)[0].argmax(0).numpy().astype(np.uint8)
            for i, s in enumerate(sizes)]


def open_vocab_miou(joint_NhwC: np.ndarray, text_LC: np.ndarray, masks: list[np.ndarray]) -> float:
    """mIoU of open-vocabulary masks against the ground truth."""
    preds = predict_open_vocab(joint_NhwC, text_LC, [m.shape for m in masks])
    return miou(preds, masks, text_LC.shape[0])[0]
