"""The one teacher registry, built explicitly (AM-RADIO arXiv 2312.06709 / PHI-S arXiv 2410.01680 teachers).

`TEACHERS` below is the whole table: every teacher name the project knows, as frozen `TeacherSpec` data
(spaCy's lesson: registrations live in one module, so "not imported" never means "not registered").
Adapters live one file per family (`dinov2.py`, `open_clip_family.py`, `sam.py`); `build_teacher`
dispatches on `spec.family`, never on name substrings.

Real teachers (weights=pretrained) are the papers' models at the papers' resolutions. Tiny teachers
(weights=random, chosen explicitly) use the same model code at small sizes via `arch_kwargs`; they serve
tests and the offline demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from stages.teachers.dinov2 import build_dinov2_teacher
from stages.teachers.open_clip_family import build_open_clip_teacher
from stages.teachers.sam import build_sam_teacher
from stages.teachers.errors import MissingWeightsError
from stages.teachers.resize import ResizeRule
from stages.teachers.resolution import resample_state_dict, spec_at_resolution
from stages.teachers.spec import Family, TeacherSpec, WeightsSource
from stages.teachers.weights import (
    ResolvedWeights,
    random_init_seed,
    resolve_weights,
    weights_available,
    weights_identity,
)

__all__ = ["TEACHERS", "teacher_names", "get_teacher_spec", "build_teacher", "weights_identity",
           "weights_available"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
TINY_NOTE = ("Tiny demo/test teacher, random weights (explicit). activation_scale is a synthetic property "
             "of the demo teachers: it multiplies the outputs so the demo teachers' activation scales differ "
             "by orders of magnitude, as real teachers' do (DFN CLIP global std 0.029, SAM-H 5.47).")


def _dinov2(name: str, arch: str, width: int, registers: int, **kw: Any) -> TeacherSpec:
    defaults = dict(weights_id="lvd142m", weights=WeightsSource.PRETRAINED, resolution=224, license="apache-2.0",
                    description=f"DINOv2 ViT/14 {'with 4 registers ' if registers else ''}(timm), CLS summary")
    return TeacherSpec(name=name, family=Family.DINOV2, arch=arch, patch_size=14, summary_dim=width,
                       patch_dim=width, num_prefix_tokens=1 + registers, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       **{**defaults, **kw})


def _sam(name: str, arch: str, width: int, **kw: Any) -> TeacherSpec:
    # SAM's own preprocessing: longest side to the input side, zero padding (ResizeLongestSide + pad)
    defaults = dict(weights_id="sa1b", weights=WeightsSource.PRETRAINED, resolution=1024, license="apache-2.0",
                    description="SAM image encoder (timm samvit), last block before the neck, no summary",
                    resize=ResizeRule.LONGEST_PAD)
    return TeacherSpec(name=name, family=Family.SAM, arch=arch, patch_size=16, summary_dim=0, patch_dim=width,
                       num_prefix_tokens=0, mean=IMAGENET_MEAN, std=IMAGENET_STD, **{**defaults, **kw})


def _open_clip(name: str, arch: str, tag: str, *, resolution: int, patch_size: int, summary_dim: int,
               patch_dim: int, num_prefix_tokens: int, mean: tuple, std: tuple, **kw: Any) -> TeacherSpec:
    defaults = dict(weights=WeightsSource.PRETRAINED, license="", description="")
    return TeacherSpec(name=name, family=Family.OPEN_CLIP, arch=arch, weights_id=tag, resolution=resolution,
                       patch_size=patch_size, summary_dim=summary_dim, patch_dim=patch_dim,
                       num_prefix_tokens=num_prefix_tokens, mean=mean, std=std, **{**defaults, **kw})


TEACHERS: dict[str, TeacherSpec] = {spec.name: spec for spec in (
    # ---- DINOv2 (timm, lvd142m) at 224 px: grid 16×16 -------------------------------------------------
    _dinov2("dinov2_s", "vit_small_patch14_dinov2", 384, 0),
    _dinov2("dinov2_b", "vit_base_patch14_dinov2", 768, 0),
    _dinov2("dinov2_l", "vit_large_patch14_dinov2", 1024, 0),
    _dinov2("dinov2_g", "vit_giant_patch14_dinov2", 1536, 0),
    _dinov2("dinov2_s_reg", "vit_small_patch14_reg4_dinov2", 384, 4),
    _dinov2("dinov2_b_reg", "vit_base_patch14_reg4_dinov2", 768, 4),
    _dinov2("dinov2_l_reg", "vit_large_patch14_reg4_dinov2", 1024, 4),
    _dinov2("dinov2_g_reg", "vit_giant_patch14_reg4_dinov2", 1536, 4),
    # ---- open_clip image towers -----------------------------------------------------------------------
    _open_clip("clip_h_dfn", "ViT-H-14-378-quickgelu", "dfn5b", resolution=378, patch_size=14,
               summary_dim=1024, patch_dim=1280, num_prefix_tokens=1, mean=OPENAI_MEAN, std=OPENAI_STD,
               license="apple-sample-code-license", description="DFN5B CLIP ViT-H/14 at 378 px (grid 27×27)"),
    # OpenAI CLIP was trained with QuickGELU: the -quickgelu config matches its weights.
    _open_clip("clip_l_openai", "ViT-L-14-336-quickgelu", "openai", resolution=336, patch_size=14,
               summary_dim=768, patch_dim=1024, num_prefix_tokens=1, mean=OPENAI_MEAN, std=OPENAI_STD,
               license="mit", description="OpenAI CLIP ViT-L/14 at 336 px (grid 24×24)",
               resize=ResizeRule.SHORTEST_CROP),  # OpenAI's Resize(shortest side) + CenterCrop
    _open_clip("siglip_so400m", "ViT-SO400M-14-SigLIP-384", "webli", resolution=384, patch_size=14,
               summary_dim=1152, patch_dim=1152, num_prefix_tokens=0, mean=SIGLIP_MEAN, std=SIGLIP_STD,
               license="apache-2.0",
               description="SigLIP SO400M/14 at 384 px (grid 27×27); no CLS: summary = attention-pool output"),
    # ---- SAM image encoders (timm samvit, sa1b) at 1024 px: grid 64×64 ---------------------------------
    _sam("sam_b", "samvit_base_patch16", 768),
    _sam("sam_l", "samvit_large_patch16", 1024),
    _sam("sam_h", "samvit_huge_patch16", 1280),
    # ---- tiny teachers: same model code, small sizes, random weights ------------------------------------
    _dinov2("tiny_dinov2", "vit_small_patch14_reg4_dinov2", 96, 4, weights_id="", weights=WeightsSource.RANDOM,
            resolution=112, arch_kwargs=dict(embed_dim=96, depth=3, num_heads=3), activation_scale=1.0,
            license="n/a (random weights)",
            description=TINY_NOTE + " DINOv2-style ViT/14 with 4 registers, 112 px, grid 8×8."),
    # ViT-B-16's config fully replaced through create_model(**model_kwargs): open_clip's VisionTransformer
    # with a CLS token, QuickGELU and a projection (summary 48-d, tokens 96-d), 64 px at patch 8.
    _open_clip("tiny_clip", "ViT-B-16", "", resolution=64, patch_size=8, summary_dim=48, patch_dim=96,
               num_prefix_tokens=1, mean=OPENAI_MEAN, std=OPENAI_STD, weights=WeightsSource.RANDOM,
               arch_kwargs=dict(
                   embed_dim=48, quick_gelu=True,
                   vision_cfg=dict(image_size=64, patch_size=8, width=96, layers=3, head_width=32),
                   # the real BPE vocabulary, so open_clip's offline tokenizer drives the tiny text tower
                   text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=2, layers=1)),
               activation_scale=0.03, license="n/a (random weights)",
               description=TINY_NOTE + " open_clip CLIP ViT/8 tower, 64 px, grid 8×8, activation_scale 0.03."),
    _sam("tiny_sam", "samvit_base_patch16", 96, weights_id="", weights=WeightsSource.RANDOM, resolution=128,
         arch_kwargs=dict(embed_dim=96, depth=3, num_heads=3, global_attn_indexes=[2], window_size=4,
                          neck_chans=32),
         activation_scale=8.0, license="n/a (random weights)",
         # squashed, as before per-teacher resize rules: the demo's stores and golden numbers stay valid
         # (tests run SAM's own rule on a LONGEST_PAD variant of this teacher)
         resize=ResizeRule.SQUASH,
         description=TINY_NOTE + " SAM ViT/16 encoder before the neck, 128 px, grid 8×8, activation_scale 8."),
)}

_BUILDERS: dict[Family, Callable[[TeacherSpec, ResolvedWeights], nn.Module]] = {
    Family.DINOV2: build_dinov2_teacher,
    Family.OPEN_CLIP: build_open_clip_teacher,
    Family.SAM: build_sam_teacher,
}


def teacher_names() -> list[str]:
    """All registered teacher names, in table order."""
    return list(TEACHERS)


def get_teacher_spec(name: str) -> TeacherSpec:
    """The registered spec called `name`, or for a store key "<teacher>@<side>" that teacher's spec at `side`
    pixels (stages/teachers/resolution.py); unknown names raise ValueError listing the valid ones."""
    from store_schema.layout import split_store_key

    teacher, resolution = split_store_key(name) if "@" in name else (name, None)
    if teacher not in TEACHERS:
        raise ValueError(f"unknown teacher {teacher!r}; valid teachers: {', '.join(TEACHERS)}")
    spec = TEACHERS[teacher]
    if resolution == spec.resolution:  # the same teacher at the same side: the store <teacher> already is it
        raise ValueError(f"store {name!r} is teacher {teacher!r} at its own input side {resolution} px: that store is "
                         f"{teacher!r}; <teacher>@<side> names a further side (e.g. {teacher}@{2 * resolution})")
    return spec if resolution is None else spec_at_resolution(spec, resolution)


def check_checkpoint(spec: TeacherSpec, checkpoint: Path) -> None:
    """Load `checkpoint` into teacher `spec` on the CPU (strictly, as the workers will), so that a file that is
    not this teacher's weights fails before any store exists: ValueError naming the file, the teacher and
    the mismatch in a few lines (the first missing / unexpected keys or shapes), never a loader traceback.
    Costs one CPU load of the weights in the driver."""
    try:
        build_teacher(spec, checkpoint=checkpoint, device="cpu")
    except MissingWeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure here means "not this teacher's checkpoint"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        short = "; ".join(ln if len(ln) <= 200 else ln[:200] + " ..." for ln in lines[:4])
        raise ValueError(f"--checkpoint {checkpoint} is not a checkpoint of teacher {spec.name!r} ({spec.arch}): "
                         f"{type(e).__name__}: {short}") from None


def build_teacher(spec: TeacherSpec, *, checkpoint: Path | None = None, device: str | torch.device = "cpu"
                  ) -> nn.Module:
    """Build a frozen teacher: eval mode, requires_grad False, `forward(pixels_BCHW) -> TeacherOutput`.

    Args:
        spec: what to build (need not be registered: tests build variants with `dataclasses.replace`).
        checkpoint: a local weights file (spec.weights must be pretrained); its sha256 goes into
            `weights_identity`.
        device: where the teacher runs. "meta" builds shapes only (random-weight specs only): a cheap way
            to check a giant architecture against its spec.

    Raises:
        MissingWeightsError: pretrained weights are neither in the hub cache nor at `checkpoint`.
    """
    weights = resolve_weights(spec, checkpoint, hash_file=False)
    device = torch.device(device)
    if device.type == "meta":
        if weights.source != "random":
            raise ValueError(f"device='meta' builds shapes only; teacher {spec.name!r} has {weights.source} weights")
        with torch.device("meta"):
            teacher = _BUILDERS[spec.family](spec, weights)
    else:
        # Random init on the CPU under a name-derived seed: identical teachers in every actor / machine.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_init_seed(spec))
            teacher = _BUILDERS[spec.family](spec, weights)
        registered = TEACHERS.get(spec.name)
        if weights.source == "random" and registered is not None and registered.resolution != spec.resolution:
            # the same random teacher at another size: its registered build's weights, resampled
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(random_init_seed(spec))
                reference = _BUILDERS[spec.family](spec_at_resolution(spec, registered.resolution), weights)
            teacher.load_state_dict(resample_state_dict(reference.state_dict(), teacher.state_dict()))
        teacher = teacher.to(device)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
