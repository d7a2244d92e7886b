"""Weights files shared by teachers and students: the Hugging Face hub cache (looked up without the network),
timm's hub names, a file's sha256, and reading a state dict from .safetensors or a torch file.

AM-RADIO (arXiv 2312.06709) distils from pretrained teachers and the PHI-S ablations (arXiv 2410.01680)
start students from timm's pretrained ViTs; both find their files here, so a student never imports
teacher code (stage two must run where the teacher families are unavailable). stages/teachers/weights.py
and stages/students/weights.py build the errors and loading rules on top.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache directory in effect now."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def timm_hub_location(timm_name: str, *, owner: str) -> tuple[str, list[str], str]:
    """(hub repo id, candidate file names, download recipe) of timm weights "<arch>[.<tag>]" (no tag: timm's
    default tag for the architecture); ValueError naming `owner` when timm has no hub weights by that name.
    Teachers and students (stages/students/weights.py) both resolve timm weights here."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"timm has no hub weights {timm_name!r} for {owner}")
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    recipe = f"python -c \"import timm; timm.create_model('{timm_name}', pretrained=True)\""
    return cfg.hf_hub_id, files, recipe


def find_in_hub_cache(repo_id: str, filenames: list[str]) -> Path | None:
    """The first cached file among `filenames` of `repo_id`, without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=hub_cache_dir())
        if isinstance(hit, str):
            return Path(hit)
    return None


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights_only); unwraps {"state_dict": ...}."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return {k.removeprefix("module."): v for k, v in sd.items()}
