"""Text towers of the open_clip teachers: tokenizers (offline), prompt-set embeddings, image-side projection.

CLIP zero-shot classification (Radford et al., arXiv 2103.00020): each class's template sentences are
encoded by the text tower, L2-normalized, averaged over templates and normalized again; an image is
assigned the class whose embedding has the largest cosine with its image embedding. MaskCLIP (Zhou et
al., arXiv 2112.01071) classifies patch tokens the same way after the image tower's own map into the
joint space; for open_clip ViTs that map is ``ln_post`` followed by ``proj`` (the summary is
``ln_post(CLS) @ proj``).

Tokenizers: open_clip's BPE vocabulary ships in its wheel, so CLIP tokenizers work offline. SigLIP's is a
Hugging Face tokenizer (open_clip's model config names it in ``text_cfg.hf_tokenizer_name``): it needs the
``transformers`` package and the tokenizer files in the hub cache; when either is missing,
``MissingTokenizerError`` says which, where it looked and how to provide it. SigLIP's image tower pools
with an attention head, not a linear map, so it has no projection here (zero-shot works, open-vocabulary
segmentation does not).

Shape legend: L classes, T templates, Cs joint width, Cp patch width.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch
from torch import nn

from stages.prompts import PromptSet
from stages.teachers.spec import Family, TeacherSpec


class MissingTokenizerError(RuntimeError):
    """A teacher's tokenizer is not available offline (package or files missing)."""


def tokenizer_source(spec: TeacherSpec) -> str:
    """"open_clip-bpe" (ships in the wheel) or "hf:<repo>" for a Hugging Face tokenizer."""
    if spec.family is not Family.OPEN_CLIP:
        raise ValueError(f"teacher {spec.name!r} ({spec.family.value}) has no text tower; text embeddings need "
                         "an open_clip (CLIP / SigLIP) teacher")
    from open_clip.factory import get_model_config

    cfg = get_model_config(spec.arch) or {}
    name = {**cfg.get("text_cfg", {}), **spec.arch_kwargs.get("text_cfg", {})}.get("hf_tokenizer_name", "")
    return f"hf:{name}" if name else "open_clip-bpe"


def context_length(spec: TeacherSpec) -> int:
    """The text tower's context length (arch_kwargs override the open_clip config)."""
    from open_clip.factory import get_model_config

    cfg = get_model_config(spec.arch) or {}
    return int({**cfg.get("text_cfg", {}), **spec.arch_kwargs.get("text_cfg", {})}.get("context_length", 77))


def check_tokenizer_offline(spec: TeacherSpec) -> None:
    """Raise MissingTokenizerError when the teacher's tokenizer cannot be built without the network."""
    source = tokenizer_source(spec)
    if not source.startswith("hf:"):
        return
    repo = source[3:]
    if importlib.util.find_spec("transformers") is None:
        raise MissingTokenizerError(
            f"teacher {spec.name!r} uses the Hugging Face tokenizer {repo!r}, which needs the `transformers` "
            f"package (not installed). Install it (pip install transformers) and put the tokenizer files in the "
            f"hub cache on a connected machine: python -c \"from transformers import AutoTokenizer; "
            f"AutoTokenizer.from_pretrained('{repo}')\"")
    from huggingface_hub import constants, try_to_load_from_cache

    found = [f for f in ("tokenizer.json", "spiece.model", "tokenizer_config.json")
             if isinstance(try_to_load_from_cache(repo, f), str)]
    if not found:
        raise MissingTokenizerError(
            f"teacher {spec.name!r}: tokenizer files of {repo!r} are not in the Hugging Face hub cache "
            f"({constants.HF_HUB_CACHE}); on a connected machine run python -c \"from transformers import "
            f"AutoTokenizer; AutoTokenizer.from_pretrained('{repo}')\" and copy the cache here (or set HF_HOME)")


def build_tokenizer(spec: TeacherSpec) -> Any:
    """open_clip's tokenizer for the teacher at its text tower's context length (checked offline first)."""
    check_tokenizer_offline(spec)
    import open_clip

    return open_clip.get_tokenizer(spec.arch, context_length=context_length(spec))


@torch.no_grad()
def encode_prompt_set(model: nn.Module, tokenizer: Any, prompts: PromptSet, *, batch_size: int = 256,
                      device: str | torch.device = "cpu") -> np.ndarray:
    """Class embeddings [L, Cs]: per class the mean of its L2-normalized template embeddings, renormalized."""
    sentences = [s for i in range(len(prompts.labels)) for s in prompts.sentences(i)]
    parts = []
    for lo in range(0, len(sentences), batch_size):
        tokens = tokenizer(sentences[lo : lo + batch_size]).to(device)
        parts.append(model.encode_text(tokens, normalize=True).float().cpu())
    emb_LTC = torch.cat(parts).reshape(len(prompts.labels), len(prompts.templates), -1)
    emb_LC = emb_LTC.mean(1)
    return torch.nn.functional.normalize(emb_LC, dim=-1).numpy()


def image_projection(visual: nn.Module) -> dict[str, np.ndarray] | str:
    """{ln_post_weight, ln_post_bias, proj} of an open_clip ViT tower, or why the tower has none (str)."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        return (f"{type(visual).__name__} towers (e.g. SigLIP's attention-pool head) have no linear map from "
                "patch tokens into the joint space")
    if visual.proj is None or getattr(visual, "attn_pool", None) is not None:
        return "this ViT tower has no linear projection after ln_post (no proj or an attention pool)"
    to_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    return {"ln_post_weight": to_np(visual.ln_post.weight), "ln_post_bias": to_np(visual.ln_post.bias),
            "proj": to_np(visual.proj)}
