"""Features for evaluation at scale, streamed from disk: the run's student (cached once per run and dataset)
and the teachers (their stores over the dataset).

The student's features over an evaluation dataset are computed batch by batch from view 0 (the whole
image at the student's input size, as `pipeline extract` gives the teachers) and written block by block to
``<run>/eval/cache/<dataset>.zarr`` (``store_schema.eval_cache``), keyed by the run's fingerprint, its
checkpoint step and the manifest hash: later probes and later evaluations read it, a retrained or further
trained run refills it. What is cached:

* ``summary`` float32 [N, K·C]: the concatenation of the student's K summary tokens (RADIO's kNN feature,
  ``radio_model.py::_extract_final``, AM-RADIO arXiv 2312.06709);
* ``adaptor/<teacher>`` float32 [N, C_t]: each summary adaptor's output in its teacher's space (zero-shot
  through that teacher's text embeddings);
* ``features`` bf16 bits [N, h, w, C] (dense datasets only): the student's backbone patch features.

Teacher references read the teachers' stores over the same dataset (``pipeline extract --root ROOT``):
view 0's stored summary and patches, decoded shard by shard as asked.

Shape legend: N images, B batch, K summary tokens, C channels, h/w grid.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from stages.corpus.samples import render_samples
from stages.distill.run_dir import eval_cache_path
from stages.evaluate.knn import summary_feature
from store_schema import layout
from store_schema.codecs import bf16_bits_to_float32, decode_from_store, float32_to_bf16_bits
from store_schema.eval_cache import BlockCache, open_block_cache, read_rows

BLOCK_SIZE = 64  # images per cache block: the unit of resume and of one write


class Rows:
    """A row source over a subset of images: ``rows[lo:hi]`` reads ``read(ids[lo:hi])`` (what the streamed
    kNN takes as its bank), ``.shape`` = (len(ids), width)."""

    def __init__(self, read: Any, ids: np.ndarray, width: int) -> None:
        self._read, self.ids, self.shape = read, np.asarray(ids, np.int64), (len(ids), int(width))

    def __getitem__(self, sl: slice) -> np.ndarray:
        return self._read(self.ids[sl])


class Preloaded:
    """``read(ids)`` for ids among ``ids``, served from memory when all their rows fit in ``budget_bytes``
    (read once, in sorted order, a chunk at a time), else read from disk on every call. Small evaluation
    sets then cost one read instead of one per mini-batch; large ones (ImageNet, ADE20k features) stream,
    so memory stays bounded by the budget."""

    def __init__(self, read: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, *, budget_bytes: int,
                 chunk: int = 256) -> None:
        self._read, ids = read, np.unique(np.asarray(ids, np.int64))
        self.values: np.ndarray | None = None
        if len(ids) == 0 or read(ids[:1]).nbytes * len(ids) > budget_bytes:
            return
        self.values = np.concatenate([read(ids[lo : lo + chunk]) for lo in range(0, len(ids), chunk)])
        self._ids = ids

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        if self.values is None:
            return self._read(ids)
        pos = np.searchsorted(self._ids, np.asarray(ids, np.int64))
        if np.any(pos >= len(self._ids)) or np.any(self._ids[np.minimum(pos, len(self._ids) - 1)] != ids):
            return self._read(ids)  # ids outside the preloaded set
        return self.values[pos]


class StudentFeatures:
    """The run's cached student features over one dataset (see the module docstring)."""

    def __init__(self, cache: BlockCache, adaptors: list[str], dense: bool) -> None:
        self.cache, self.adaptors, self.dense = cache, adaptors, dense
        self.summary_dim = int(cache.array("summary").shape[1])
        if dense:
            _, h, w, C = cache.array("features").shape
            self.grid, self.channels = (int(h), int(w)), int(C)

    def summary(self, ids: np.ndarray) -> np.ndarray:
        return self.cache.read("summary", ids)

    def adaptor_summary(self, teacher: str, ids: np.ndarray) -> np.ndarray:
        return self.cache.read(f"adaptor/{teacher}", ids)

    def features(self, ids: np.ndarray) -> np.ndarray:
        return bf16_bits_to_float32(self.cache.read("features", ids))


def _cache_arrays(model: Any, dense: bool) -> dict[str, tuple[tuple[int, ...], str]]:
    with torch.no_grad():
        out = model(model.pixels(np.zeros((1, model.img_size, model.img_size, 3), np.uint8),
                                 device=next(model.parameters()).device))
    arrays = {"summary": ((int(summary_feature(out.backbone_summary_BKC.float(), "concat").shape[1]),), "float32")}
    for name, a in out.adaptors.items():
        if a.summary_BC is not None:
            arrays[f"adaptor/{name}"] = ((int(a.summary_BC.shape[1]),), "float32")
    if dense:
        arrays["features"] = (tuple(int(v) for v in out.backbone_features_BhwC.shape[1:]), "uint16")
    return arrays


@torch.no_grad()
def student_features(model: Any, manifest: Any, run_dir: Any, *, run_key: dict[str, Any], dense: bool,
                     batch_size: int = 32, log: Any = None) -> StudentFeatures:
    """The run's student features over the dataset of `manifest`, computed (or completed) into its cache.

    run_key: what the features are a function of besides the manifest (run fingerprint, checkpoint step).
    Only ok images are computed; a block holds at most BLOCK_SIZE images, so memory is one block."""
    arrays = _cache_arrays(model, dense)
    key = {**run_key, "manifest_hash": manifest.hash, "img_size": model.img_size, "view": 0}
    path = eval_cache_path(run_dir, manifest.dataset.name)
    cache, what = open_block_cache(path, kind=layout.EVAL_CACHE_KIND, key=key, num_images=manifest.num_images,
                                   block_size=BLOCK_SIZE, arrays=arrays)
    todo = cache.incomplete_blocks()
    if log is not None:
        log(f"feature cache {path}: {what}; {len(todo)} of {cache.num_blocks} blocks to compute")
    device = next(model.parameters()).device
    for k in todo:
        lo, hi = cache.block_range(k)
        block = {n: np.zeros((hi - lo, *shape), dtype) for n, (shape, dtype) in arrays.items()}
        ids = np.flatnonzero(manifest.ok_N[lo:hi]) + lo
        for b in range(0, len(ids), batch_size):
            ids_B = ids[b : b + batch_size]
            pairs_B2 = np.stack([ids_B, np.zeros_like(ids_B)], 1)
            out = model(model.pixels(render_samples(manifest, pairs_B2, model.img_size), device=device))
            rows = ids_B - lo
            block["summary"][rows] = summary_feature(out.backbone_summary_BKC.float(), "concat").cpu().numpy()
            for name, a in out.adaptors.items():
                if a.summary_BC is not None:
                    block[f"adaptor/{name}"][rows] = a.summary_BC.float().cpu().numpy()
            if dense:
                block["features"][rows] = float32_to_bf16_bits(out.backbone_features_BhwC.float().cpu().numpy())
        cache.write_block(k, block)
    adaptors = [n[len("adaptor/"):] for n in arrays if n.startswith("adaptor/")]
    return StudentFeatures(cache, adaptors, dense)


class TeacherFeatures:
    """A teacher's stored view-0 outputs over the dataset (its store under the dataset root)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.grid = tuple(store.grid)
        self.channels = int(store.patch_dim)
        self.summary_dim = int(store.summary_dim)

    def _view0(self, name: str, array: Any, ids: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(decode_from_store(read_rows(array, ids, 0)), np.float32)
        except ValueError as e:  # a crc32c mismatch: name the store, the shards and the remedy
            raise self.store.corruption_error(name, np.asarray(ids), e) from e

    def summary(self, ids: np.ndarray) -> np.ndarray:
        return self._view0(layout.SUMMARY, self.store.summary, ids)

    def features(self, ids: np.ndarray) -> np.ndarray:
        return self._view0(layout.PATCHES, self.store.patches, ids)
