"""Where a teacher's weights come from: explicit random init, the Hugging Face hub cache, or a local file.

DESIGN §4 (real teachers without the internet; AM-RADIO arXiv 2312.06709 distils from frozen pretrained
teachers). The loading code for real weights exists and is exercised, and nothing ever falls back to
random weights silently:

* `WeightsSource.RANDOM` is a choice written in the spec (tests, the offline demo). Random weights are
  seeded from the teacher name, so every Ray actor and every machine builds the same teacher.
* `WeightsSource.PRETRAINED` with no checkpoint: the file must already be in the hub cache. We look for
  it ourselves (`huggingface_hub.try_to_load_from_cache`, no network) and hand the cached *file* to timm
  / open_clip, so nothing waits on the network. open_clip alone only warns and returns random weights
  when weights are missing; we refuse first, and also pass `require_pretrained=True`.
* A local checkpoint path: timm families load it through timm's own pretrained loader (strict, with
  timm's checkpoint filter, so original-format DINOv2 / SAM files work too); open_clip families load the
  `visual.*` entries of an open_clip CLIP state dict (or a bare vision-tower state dict) strictly into
  the vision tower. Its sha256 is recorded in the store.

open_clip is imported lazily: the GPU benchmark machine has timm but not open_clip.
"""

from __future__ import annotations

import posixpath
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stages.hub_weights import (file_sha256, find_in_hub_cache, hub_cache_dir, load_state_dict_file,
                                 timm_hub_location)
from stages.teachers.errors import MissingWeightsError
from stages.teachers.spec import Family, TeacherSpec, WeightsSource

# Which library builds (and loads weights for) each family.
LIBRARY = {Family.DINOV2: "timm", Family.SAM: "timm", Family.OPEN_CLIP: "open_clip"}


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the weights of one build come from. source: "random" | "hub" | "local"."""

    source: str
    id: str
    path: Path | None  # the file to load (hub cache file or local checkpoint); None for random
    sha256: str | None  # of a local checkpoint file; None otherwise

    def identity(self) -> dict:
        return {"source": self.source, "id": self.id, "sha256": self.sha256}


def random_init_seed(spec: TeacherSpec) -> int:
    """Seed of a teacher's random init: stable across processes (crc32 of the name, not `hash`)."""
    return zlib.crc32(spec.name.encode("utf-8"))


def _timm_name(spec: TeacherSpec) -> str:
    return f"{spec.arch}.{spec.weights_id}" if spec.weights_id else spec.arch


def _hub_id(spec: TeacherSpec) -> str:
    """The weights' name as recorded: "timm:<arch>.<tag>" or "open_clip:<arch>/<tag>"."""
    if LIBRARY[spec.family] == "timm":
        return f"timm:{_timm_name(spec)}"
    return f"open_clip:{spec.arch}/{spec.weights_id}"


def hub_location(spec: TeacherSpec) -> tuple[str, list[str], str]:
    """(hub repo id, candidate file names in preference order, a one-line download recipe)."""
    if not spec.weights_id:
        raise ValueError(f"teacher {spec.name!r} is pretrained but has no weights_id: pass a checkpoint")
    if LIBRARY[spec.family] == "timm":
        return timm_hub_location(_timm_name(spec), owner=f"teacher {spec.name!r}")
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.arch, spec.weights_id)
    if not cfg or not cfg.get("hf_hub"):
        raise ValueError(f"open_clip has no hub weights {spec.arch}/{spec.weights_id} for {spec.name!r}")
    # open_clip's convention: "org/repo/" (default file name) or "org/repo/file.bin"
    repo_id, filename = posixpath.split(cfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    files = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
    if filename.endswith((".bin", ".pth")) and filename != HF_WEIGHTS_NAME:
        files.append(filename[:-4] + ".safetensors")  # open_clip prefers a safetensors twin
    files.append(filename)
    recipe = (f"python -c \"import open_clip; open_clip.create_model('{spec.arch}', "
              f"pretrained='{spec.weights_id}')\"")
    return repo_id, files, recipe


def resolve_weights(spec: TeacherSpec, checkpoint: Path | None = None, *, hash_file: bool = True
                    ) -> ResolvedWeights:
    """Decide where the weights of `spec` come from; raise MissingWeightsError if they are absent."""
    if checkpoint is not None:
        if spec.weights is not WeightsSource.PRETRAINED:
            raise ValueError(
                f"teacher {spec.name!r} has weights={spec.weights.value}; a checkpoint needs a spec with "
                "weights=pretrained")
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                teacher=spec.name, weights=f"local checkpoint {path}", looked_in=str(path.resolve()),
                how="pass --checkpoint PATH pointing at an existing state_dict file (.pt/.pth/.bin/.safetensors)")
        sha = file_sha256(path) if hash_file else None
        return ResolvedWeights("local", str(path.resolve()), path, sha)
    if spec.weights is WeightsSource.RANDOM:
        return ResolvedWeights("random", f"random-init:seed={random_init_seed(spec)}", None, None)
    repo_id, files, recipe = hub_location(spec)
    path = find_in_hub_cache(repo_id, files)
    ident = _hub_id(spec)
    if path is None:
        raise MissingWeightsError(
            teacher=spec.name,
            weights=f"{ident} (hub repo {repo_id})",
            looked_in=f"Hugging Face hub cache {hub_cache_dir()} for {', '.join(files)}",
            how=f"on a connected machine run {recipe} and copy its hub cache into {hub_cache_dir()} "
                "(or point HF_HUB_CACHE at a copy), or pass --checkpoint PATH to a local weights file")
    return ResolvedWeights("hub", ident, path, None)


def weights_identity(spec: TeacherSpec, checkpoint: Path | None = None) -> dict:
    """Identity recorded in a teacher store: {"source", "id", "sha256"}.

    source is "random", "hub" or "local"; sha256 is the local checkpoint file's (None otherwise). For hub
    weights this needs no cached file (the driver may run where the workers' caches are not).
    """
    if checkpoint is None and spec.weights is WeightsSource.PRETRAINED:
        hub_location(spec)  # validates that the library knows these weights
        return {"source": "hub", "id": _hub_id(spec), "sha256": None}
    return resolve_weights(spec, checkpoint).identity()


def weights_available(spec: TeacherSpec, *, checkpoint: Path | None = None) -> str:
    """"random", "local" (checkpoint file exists), "cached" (in the hub cache) or "missing"."""
    if checkpoint is not None:
        return "local" if Path(checkpoint).expanduser().is_file() else "missing"
    if spec.weights is WeightsSource.RANDOM:
        return "random"
    repo_id, files, _ = hub_location(spec)
    return "cached" if find_in_hub_cache(repo_id, files) is not None else "missing"


def create_timm_model(spec: TeacherSpec, weights: ResolvedWeights) -> nn.Module:
    """Build a timm model for a DINOv2 / SAM teacher, loading `weights.path` through timm if given."""
    import timm

    kwargs = {"img_size": spec.resolution, "num_classes": 0, **spec.arch_kwargs}
    if weights.path is None:
        return timm.create_model(spec.arch, pretrained=False, **kwargs)
    # timm's own loader: strict, applies the family's checkpoint filter (pos-embed resampling to
    # spec.resolution, original-format conversion); `file` makes it read the file, never the network.
    return timm.create_model(_timm_name(spec), pretrained=True,
                             pretrained_cfg_overlay={"file": str(weights.path)}, **kwargs)


def create_open_clip_model(spec: TeacherSpec, weights: ResolvedWeights, *, need_text: bool = False) -> nn.Module:
    """Build a whole open_clip model (image and text towers). arch_kwargs override top-level model-config
    keys (tiny teachers) through `create_model(**model_kwargs)`, never by editing open_clip's config registry.

    need_text: a local checkpoint must then hold the text tower too (a bare vision-tower file is refused)."""
    import open_clip

    device = torch.get_default_device()  # "meta" inside a `torch.device("meta")` context
    if weights.source == "hub":
        return open_clip.create_model(spec.arch, pretrained=str(weights.path), require_pretrained=True,
                                      device=device, **spec.arch_kwargs)
    model = open_clip.create_model(spec.arch, pretrained=None, device=device, **spec.arch_kwargs)
    if weights.source == "local":
        sd = load_state_dict_file(weights.path)
        if any(k.startswith("visual.") for k in sd):  # a whole open_clip CLIP checkpoint
            if need_text:
                model.load_state_dict(sd, strict=True)
            else:
                model.visual.load_state_dict(
                    {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}, strict=True)
        elif need_text:
            raise ValueError(f"checkpoint {weights.path} of teacher {spec.name!r} holds only a vision tower; the "
                             "text embeddings need the whole open_clip CLIP state dict (visual.* and text keys)")
        else:
            model.visual.load_state_dict(sd, strict=True)
    return model


def create_open_clip_visual(spec: TeacherSpec, weights: ResolvedWeights) -> nn.Module:
    """Build an open_clip vision tower (see create_open_clip_model)."""
    return create_open_clip_model(spec, weights).visual
