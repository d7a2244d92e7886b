"""The text side of a CLIP-family teacher's store: prompt-set embeddings and the image-side projection.

Zero-shot classification and open-vocabulary segmentation (CLIP, Radford et al. arXiv 2103.00020;
MaskCLIP, Zhou et al. arXiv 2112.01071; both reported by AM-RADIO, arXiv 2312.06709) need, besides the
stored image features, (a) one text embedding per class from the teacher's text tower and (b) the
teacher's linear map from patch tokens into the joint image-text space. Stage one writes both into the
teacher's own ``<teacher>.zarr`` (``pipeline extract-text``), so evaluation never builds a teacher:

```
<teacher>.zarr/
  text/<prompt hash, 16 hex>/embeddings   float32 (class, channel) [L, Cs]  L2-normalized rows
        attrs: prompt_set {labels, names, templates}, prompt_hash, weights, tokenizer, context_length
  projection/{ln_post_weight [Cp], ln_post_bias [Cp], proj [Cp, Cs]}   float32
        attrs: weights, patches_after_ln_post (true: the stored patches already went through ln_post,
               so joint-space patch features are stored_patches @ proj)
```

Shape legend: L classes, Cs joint (summary) width, Cp patch width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from stages.prompts import PromptSet
from store_schema import layout, location
from store_schema.errors import StoreError, StoreMismatchError, StoreNotFoundError


class MissingTextEmbeddingsError(StoreError, LookupError):
    """A teacher store holds no text embeddings for the requested prompt set."""


class MissingProjectionError(StoreError, LookupError):
    """A teacher store holds no image-side projection into the joint space."""


def _extract_hint(store_path: Path, what: str) -> str:
    text = str(store_path).rstrip("/")
    root, _, name = text.rpartition("/")
    return (f"write it with `pipeline extract-text --teacher {name.removesuffix('.zarr')} --root {root} "
            f"--classes CLASSES_FILE --templates TEMPLATES` ({what})")


def _group(store_path: Path, mode: str) -> zarr.Group:
    store_path = location.as_location(store_path)  # a local path or an fsspec URL (s3://...)
    if not location.is_file(layout.store_file(store_path, layout.ZARR_JSON)):
        raise StoreNotFoundError(f"no teacher store at {store_path}; run `pipeline extract` for it first")
    return zarr.open_group(store_path, mode=mode, zarr_format=3)


def _write_array(group: zarr.Group, name: str, data: np.ndarray, dims: tuple[str, ...]) -> None:
    arr = group.create_array(name, shape=data.shape, dtype="float32", chunks=data.shape,
                             dimension_names=dims, overwrite=True)
    arr[...] = data


def write_text_embeddings(store_path: Path, prompts: PromptSet, emb_LC: np.ndarray, *,
                          summary_dim: int, meta: dict[str, Any]) -> str:
    """Write one prompt set's class embeddings (rows L2-normalized here); returns the group path."""
    emb_LC = np.asarray(emb_LC, np.float32)
    if emb_LC.shape != (len(prompts.labels), summary_dim):
        raise ValueError(f"text embeddings must have shape ({len(prompts.labels)}, {summary_dim}), "
                         f"got {emb_LC.shape}")
    if not np.isfinite(emb_LC).all():
        raise ValueError("text embeddings are not all finite")
    emb_LC = emb_LC / np.maximum(np.linalg.norm(emb_LC, axis=1, keepdims=True), 1e-12)
    root = _group(store_path, "r+")
    path = layout.text_group(prompts.hash)
    group = root.require_group(path)
    _write_array(group, layout.TEXT_EMBEDDINGS, emb_LC, ("class", "channel"))
    group.attrs.update({"prompt_set": prompts.to_dict(), "prompt_hash": prompts.hash, **meta})
    return path


def read_text_embeddings(store_path: Path, prompts: PromptSet, *, classes_file: Path | None = None
                         ) -> np.ndarray:
    """emb_LC (float32, unit rows) of a prompt set; MissingTextEmbeddingsError names the set and the fix."""
    root = _group(store_path, "r")
    path = layout.text_group(prompts.hash)
    source = f"classes from {classes_file}" if classes_file else f"classes {list(prompts.labels)[:5]}"
    try:
        group = root[path]
        emb = np.asarray(group[layout.TEXT_EMBEDDINGS][...], np.float32)
    except KeyError:
        have = list_prompt_sets(store_path)
        raise MissingTextEmbeddingsError(
            f"{store_path} has no text embeddings for prompt set {prompts.hash[:16]} ({source}, "
            f"{len(prompts.templates)} templates); it holds {have or 'none'}. "
            + _extract_hint(store_path, "needs the teacher's text tower")) from None
    if group.attrs.get("prompt_set") != prompts.to_dict():
        raise StoreMismatchError(store_path, f"prompt set of {path}", expected=prompts.to_dict(),
                                 found=group.attrs.get("prompt_set"))
    return emb


def list_prompt_sets(store_path: Path) -> list[str]:
    """Prompt-set hashes (16 hex) with stored text embeddings, sorted."""
    root = _group(store_path, "r")
    if layout.TEXT_GROUP not in root:
        return []
    return sorted(name for name, _ in root[layout.TEXT_GROUP].groups())


@dataclass(frozen=True)
class Projection:
    """A teacher's image-side map into the joint space: joint = ln_post(tokens) @ proj."""

    ln_post_weight_C: np.ndarray
    ln_post_bias_C: np.ndarray
    proj_CD: np.ndarray
    patches_after_ln_post: bool

    def stored_patches_to_joint(self, patches_NC: np.ndarray) -> np.ndarray:
        """Joint-space features of stored (or predicted) patch tokens [..., Cp] -> [..., Cs]."""
        if not self.patches_after_ln_post:
            raise ValueError("this projection expects raw tokens; stored patches are after ln_post")
        return np.asarray(patches_NC, np.float32) @ self.proj_CD


def write_projection(store_path: Path, *, ln_post_weight_C: np.ndarray, ln_post_bias_C: np.ndarray,
                     proj_CD: np.ndarray, patch_dim: int, summary_dim: int, meta: dict[str, Any]) -> None:
    """Write the teacher's ln_post and proj (open_clip ViT towers) into projection/."""
    proj_CD = np.asarray(proj_CD, np.float32)
    if proj_CD.shape != (patch_dim, summary_dim):
        raise ValueError(f"proj must have shape ({patch_dim}, {summary_dim}), got {proj_CD.shape}")
    group = _group(store_path, "r+").require_group(layout.PROJECTION_GROUP)
    for name, data in zip(layout.PROJECTION_ARRAYS, (ln_post_weight_C, ln_post_bias_C, proj_CD)):
        dims = ("channel", "joint_channel") if data.ndim == 2 else ("channel",)
        _write_array(group, name, np.asarray(data, np.float32), dims)
    group.attrs.update({"patches_after_ln_post": True, **meta})


def read_projection(store_path: Path) -> Projection:
    """The stored projection; MissingProjectionError names the store and how to write it."""
    root = _group(store_path, "r")
    try:
        group = root[layout.PROJECTION_GROUP]
        arrays = [np.asarray(group[name][...], np.float32) for name in layout.PROJECTION_ARRAYS]
    except KeyError:
        why = ""
        if layout.TEXT_GROUP in root and "no_projection" in root[layout.TEXT_GROUP].attrs:
            why = f" ({root[layout.TEXT_GROUP].attrs['no_projection']})"
        raise MissingProjectionError(
            f"{store_path} holds no image-side projection (projection/ln_post_weight, ln_post_bias, proj){why}; "
            + _extract_hint(store_path, "it writes the projection of open_clip ViT towers")) from None
    return Projection(*arrays, patches_after_ln_post=bool(group.attrs.get("patches_after_ln_post", False)))


def mark_no_projection(store_path: Path, reason: str) -> None:
    """Record why a tower has no linear image-side projection (read_projection's error quotes it)."""
    _group(store_path, "r+").require_group(layout.TEXT_GROUP).attrs["no_projection"] = reason
