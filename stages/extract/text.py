"""Stage one, text side: encode prompt sets with a CLIP-family teacher's text tower into its store.

For zero-shot classification and open-vocabulary segmentation (CLIP arXiv 2103.00020, MaskCLIP arXiv
2112.01071, as AM-RADIO arXiv 2312.06709 evaluates its student), the teacher's text embeddings of every
class and its image-side projection (ln_post, proj) are written into ``<teacher>.zarr`` once
(store_schema/text_store.py), so evaluation never builds a teacher. The text tower comes from the same
weights as the image tower that filled the store: the store's recorded weights identity must match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from stages.prompts import PromptSet
from stages.teachers.spec import TeacherSpec
from stages.teachers.text_tower import (build_tokenizer, context_length, encode_prompt_set, image_projection,
                                        tokenizer_source)
from stages.teachers.weights import create_open_clip_model, random_init_seed, resolve_weights
from store_schema import text_store
from store_schema.errors import StoreMismatchError
from store_schema.layout import teacher_store_path
from store_schema.teacher_store import open_teacher_store


@dataclass(frozen=True)
class TextExtractResult:
    teacher: str
    groups: list[str]  # text/<hash> groups written
    projection: str  # "written" or why the tower has none

    def summary_line(self) -> str:
        return (f"extract-text {self.teacher}: {len(self.groups)} prompt set(s) -> {', '.join(self.groups)}; "
                f"projection {self.projection}")


def _build_clip(spec: TeacherSpec, checkpoint: Path | None, device: str) -> torch.nn.Module:
    weights = resolve_weights(spec, checkpoint, hash_file=False)
    with torch.random.fork_rng(devices=[]):  # the same name-derived seed as build_teacher: same towers
        torch.manual_seed(random_init_seed(spec))
        model = create_open_clip_model(spec, weights, need_text=True)
    return model.to(device).eval().requires_grad_(False)


def extract_text(root: Path, teacher: str, prompt_sets: list[PromptSet], *, checkpoint: Path | None = None,
                 device: str = "cpu", batch_size: int = 256) -> TextExtractResult:
    """Write each prompt set's class embeddings and the tower's projection into <root>/<teacher>.zarr."""
    from stages.teachers.registry import weights_identity

    path = teacher_store_path(root, teacher)
    store = open_teacher_store(path)
    spec = store.spec
    tokenizer_source(spec)  # refuses teachers without a text tower, before anything is built
    identity = weights_identity(spec, checkpoint)
    if identity != store.weights_identity:
        raise StoreMismatchError(path, "weights (the text tower must match the image tower that filled the store)",
                                 expected=store.weights_identity, found=identity)
    tokenizer = build_tokenizer(spec)
    model = _build_clip(spec, checkpoint, device)
    meta = {"weights": identity, "tokenizer": tokenizer_source(spec), "context_length": context_length(spec)}
    groups = []
    for prompts in prompt_sets:
        emb_LC = encode_prompt_set(model, tokenizer, prompts, batch_size=batch_size, device=device)
        groups.append(text_store.write_text_embeddings(path, prompts, emb_LC, summary_dim=spec.summary_dim,
                                                       meta=meta))
    proj = image_projection(model.visual)
    if isinstance(proj, str):
        text_store.mark_no_projection(path, f"teacher {teacher!r}: {proj}")
        done = f"not available ({proj})"
    else:
        text_store.write_projection(path, ln_post_weight_C=proj["ln_post_weight"],
                                    ln_post_bias_C=proj["ln_post_bias"], proj_CD=proj["proj"],
                                    patch_dim=spec.patch_dim, summary_dim=spec.summary_dim,
                                    meta={"weights": identity})
        done = "written"
    return TextExtractResult(teacher, groups, done)
