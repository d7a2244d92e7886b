"""A teacher at another input resolution than its registered one (AM-RADIO arXiv 2312.06709 trains SAM at
1024 px beside CLIP / DINOv2 at 432; RADIOv2.5 arXiv 2412.07679 matches every teacher at two resolutions).

A store key "<teacher>@<side>" (store_schema/layout.py) names the teacher run at `side` pixels. Its spec is
the registered one with `resolution = side` (so its patch grid follows); the model code is the same:

* pretrained weights: timm resamples a checkpoint's position embedding (and SAM's relative position
  tables) to the model's size when it loads it, open_clip likewise (`force_image_size`);
* random weights (the tiny demo teachers): the teacher is built at its registered resolution under its
  name-derived seed, then its weights are resampled to the new size the same way (`resample_state_dict`), so
  `tiny_sam@256` is the same random network as `tiny_sam` (seeding a build at another size would draw other
  weights, a different teacher).

Shape legend: N tokens, P prefix tokens, C channels, g grid side, L relative positions.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from stages.teachers.spec import Family, TeacherSpec


def spec_at_resolution(spec: TeacherSpec, resolution: int) -> TeacherSpec:
    """`spec` run at `resolution` pixels; ValueError when the side is not a multiple of the patch size."""
    if resolution == spec.resolution:
        return spec
    if resolution % spec.patch_size:
        raise ValueError(f"teacher {spec.name!r} at {resolution} px: the side must be a multiple of its patch size "
                         f"{spec.patch_size} (e.g. {spec.name}@{spec.patch_size * max(1, round(resolution / spec.patch_size))})")
    kwargs = json_copy(spec.arch_kwargs)
    if spec.family is Family.OPEN_CLIP:  # open_clip takes the tower's input size from its config
        if "vision_cfg" in kwargs:  # a config given whole (tiny teachers) replaces open_clip's
            kwargs["vision_cfg"]["image_size"] = resolution
        else:
            kwargs["force_image_size"] = resolution
    return dataclasses.replace(spec, resolution=resolution, arch_kwargs=kwargs)


def json_copy(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d))


def resample_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`source` (a teacher's weights at its own size) with every size-dependent tensor resampled to its shape
    in `target`: absolute position embeddings ([1, P + g², C], [P + g², C] or [1, g, g, C], bicubic on the
    grid, prefix positions kept) and relative position tables ([2g - 1, C], linear). ValueError for any other
    shape difference."""
    out = {}
    for key, src in source.items():
        want = tuple(target[key].shape)
        if tuple(src.shape) == want:
            out[key] = src
        elif src.ndim == 4 and src.shape[0] == 1 and src.shape[-1] == want[-1]:  # [1, g, g, C] (SAM)
            x = F.interpolate(src.permute(0, 3, 1, 2).float(), size=want[1:3], mode="bicubic", align_corners=False)
            out[key] = x.permute(0, 2, 3, 1).to(src.dtype)
        elif src.ndim in (2, 3) and src.shape[-1] == want[-1] and _prefix(src.shape[-2], want[-2]) is not None:
            out[key] = _resample_tokens(src, want[-2])
        elif src.ndim == 2 and src.shape[1] == want[1] and src.shape[0] % 2 == 1:  # [2g - 1, C] relative table
            x = F.interpolate(src.T[None].float(), size=want[0], mode="linear", align_corners=False)
            out[key] = x[0].T.to(src.dtype)
        else:
            raise ValueError(f"cannot resample {key} from {tuple(src.shape)} to {want} for another input size")
    return out


def _prefix(n_src: int, n_dst: int) -> int | None:
    """Prefix positions P such that both token counts are P + a square (the smallest such P)."""
    for p in range(0, 9):
        a, b = n_src - p, n_dst - p
        if a > 0 and b > 0 and math.isqrt(a) ** 2 == a and math.isqrt(b) ** 2 == b:
            return p
    return None


def _resample_tokens(src: torch.Tensor, n_dst: int) -> torch.Tensor:
    p = _prefix(src.shape[-2], n_dst)
    x = src if src.ndim == 3 else src[None]
    g_src, g_dst = math.isqrt(x.shape[1] - p), math.isqrt(n_dst - p)
    grid = x[:, p:].reshape(1, g_src, g_src, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(g_dst, g_dst), mode="bicubic", align_corners=False)
    y = torch.cat([x[:, :p], grid.permute(0, 2, 3, 1).reshape(1, g_dst * g_dst, -1).to(src.dtype)], 1)
    return y if src.ndim == 3 else y[0]
