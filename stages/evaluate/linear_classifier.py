"""Linear classification probe trained by mini-batches from features on disk (the linear-probe protocol of
DINO / DINOv2 on frozen summary features, as AM-RADIO arXiv 2312.06709 reports ImageNet linear accuracy).

BatchNorm (statistics of the training features, fixed, as in ``stages.evaluate.dense_probe``) + one
Linear layer, cross-entropy, AdamW with cosine decay over ``iterations`` mini-batches drawn at random
from the training images; top-1 accuracy on the val images, scored chunk by chunk. Memory: one batch, so
it runs at ImageNet size from the feature cache (the in-corpus probe of ``stages.evaluate.knn`` fits
scikit-learn on everything in memory instead).

Shape legend: B batch, C channels, L classes.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.evaluate.dense_probe import ProbeConfig, torch_threads


def train_linear_classifier(read: Callable[[np.ndarray], np.ndarray], train_ids: np.ndarray, labels_N: np.ndarray,
                            *, width: int, num_classes: int, cfg: ProbeConfig) -> nn.Module:
    """Train BatchNorm1d + Linear on rows `train_ids` of `read` (labels_N indexed by image id)."""
    train_ids = np.asarray(train_ids, np.int64)
    if len(np.unique(labels_N[train_ids])) < 2:
        raise ValueError("the linear classifier probe needs at least two classes among the training images")
    with torch_threads(cfg.threads):
        return _train(read, train_ids, labels_N, width=width, num_classes=num_classes, cfg=cfg)


def _train(read: Callable[[np.ndarray], np.ndarray], train_ids: np.ndarray, labels_N: np.ndarray, *, width: int,
           num_classes: int, cfg: ProbeConfig) -> nn.Module:
    rng = np.random.default_rng(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = nn.Sequential(nn.BatchNorm1d(width), nn.Linear(width, num_classes))
    stats = np.sort(rng.choice(train_ids, min(cfg.stats_images, len(train_ids)), replace=False))
    x = torch.as_tensor(np.concatenate([read(stats[lo : lo + 4096]) for lo in range(0, len(stats), 4096)]),
                        dtype=torch.float64)
    with torch.no_grad():
        head[0].running_mean.copy_(x.mean(0).float())
        head[0].running_var.copy_(x.var(0, unbiased=False).float())
    head.eval()  # fixed BatchNorm statistics; its affine part and the Linear train
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 * (1.0 + math.cos(math.pi * it / cfg.iterations)))
    B = min(cfg.batch_size, len(train_ids))
    for _ in range(cfg.iterations):
        ids_B = np.sort(rng.choice(train_ids, B, replace=False))
        logits_BL = head(torch.as_tensor(read(ids_B), dtype=torch.float32))
        loss = F.cross_entropy(logits_BL, torch.as_tensor(labels_N[ids_B], dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return head


@torch.no_grad()
def linear_classifier_accuracy(head: nn.Module, read: Callable[[np.ndarray], np.ndarray], val_ids: np.ndarray,
                               labels_N: np.ndarray, *, chunk: int = 4096) -> float:
    """Top-1 accuracy of the trained probe on rows `val_ids`, read chunk by chunk."""
    val_ids = np.asarray(val_ids, np.int64)
    if len(val_ids) == 0:
        raise ValueError("the linear classifier probe has no val images to score")
    correct = 0
    for lo in range(0, len(val_ids), chunk):
        ids = val_ids[lo : lo + chunk]
        pred = head(torch.as_tensor(read(ids), dtype=torch.float32)).argmax(1).numpy()
        correct += int((pred == labels_N[ids]).sum())
    return correct / len(val_ids)
