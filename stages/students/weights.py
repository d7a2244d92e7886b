"""Where a student's initial weights come from: random, timm's pretrained weights, or a local file.

The PHI-S ablations (arXiv 2410.01680) start their students from timm's pretrained `vit_base_patch16_224`
/ `vit_large_patch16_224`; AM-RADIO (arXiv 2312.06709) and most users of its code start ViT students from
pretrained weights too. `distill.student_weights` (`--student-weights`) says which:

* ``random``: the seeded random initialization (the default; the demo and the tests).
* ``pretrained``: the timm weights named in the student's size table (`vit.VIT_SIZES[...].pretrained`, or
  timm's default tag for a ``timm:<name>`` student), found in the Hugging Face hub cache exactly as a
  teacher's are (stages/teachers/weights.py: no network, never a silent fallback to random weights: a
  MissingWeightsError names the hub id and the cache it looked in).
* a path: a local state dict (.safetensors / .pt / .pth / .bin) in timm's ViT layout (what
  ``timm.create_model(...).state_dict()`` or a hub file holds), or a student's own state dict; its sha256
  is recorded in the run.

Adapting timm weights to a student: the classifier head is dropped (students have none); the position
embedding's patch grid is resampled to the student's build size (timm's `resample_abs_pos_embed`, as
timm's own loader does); prefix tokens the checkpoint lacks (the student's extra summary tokens: AM-RADIO
gives one CLS token per teacher, timm checkpoints have one) keep their random initialization, as does a
CPE table's padding beyond the checkpoint (the table is resampled from the checkpoint's grid). Every other
tensor must match the student exactly: an unexpected or missing key, or a shape that differs, is a
ValueError naming them.

Shape legend: N tokens, C channels, P prefix tokens, G grid side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from stages.students.contract import Student
from stages.teachers.errors import MissingWeightsError
from stages.hub_weights import file_sha256, find_in_hub_cache, hub_cache_dir, load_state_dict_file, timm_hub_location

RANDOM, PRETRAINED = "random", "pretrained"


@dataclass(frozen=True)
class StudentInit:
    """Resolved initial weights of a student. source: "random" | "hub" | "local"."""

    source: str
    id: str
    path: Path | None
    sha256: str | None

    def identity(self) -> dict:
        """What config.json records under "student_init"."""
        return {"source": self.source, "id": self.id, "sha256": self.sha256}


def check_student_weights(value: str) -> str:
    """A valid `student_weights` value: "random", "pretrained" or a non-empty path."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"student_weights must be 'random', 'pretrained' or a path to a weights file, got {value!r}")
    return value


def resolve_student_weights(student: str, value: str, *, pretrained_name: str | None, seed: int) -> StudentInit:
    """Where student `student`'s initial weights come from (see the module docstring).

    pretrained_name: the timm "<arch>.<tag>" its size table names (None: the student has no pretrained
    weights). Raises MissingWeightsError (hub weights not cached, or no such file) or ValueError."""
    check_student_weights(value)
    if value == RANDOM:
        return StudentInit("random", f"random-init:seed={seed}", None, None)
    if value == PRETRAINED:
        if pretrained_name is None:
            raise ValueError(f"student {student!r} has no timm pretrained weights (its architecture is not one timm "
                             "publishes weights for); use --student-weights random or a local weights file")
        repo_id, files, recipe = timm_hub_location(pretrained_name, owner=f"student {student!r}")
        path = find_in_hub_cache(repo_id, files)
        if path is None:
            raise MissingWeightsError(
                teacher=student, role="student", weights=f"timm:{pretrained_name} (hub repo {repo_id})",
                looked_in=f"Hugging Face hub cache {hub_cache_dir()} for {', '.join(files)}",
                how=f"on a connected machine run {recipe} and copy its hub cache into {hub_cache_dir()} (or point "
                    "HF_HUB_CACHE at a copy), or pass --student-weights PATH to a local weights file")
        return StudentInit("hub", f"timm:{pretrained_name}", path, None)
    path = Path(value).expanduser()
    if not path.is_file():
        raise MissingWeightsError(teacher=student, role="student", weights=f"local weights file {path}",
                                  looked_in=str(path.resolve()),
                                  how="pass --student-weights PATH pointing at an existing state dict file "
                                      "(.safetensors/.pt/.pth/.bin), or 'random' / 'pretrained'")
    return StudentInit("local", str(path.resolve()), path, file_sha256(path))


def load_student_weights(student: Student, init: StudentInit) -> None:
    """Load `init`'s file into `student` (nothing for random weights); ValueError naming what does not fit."""
    if init.path is None:
        return
    sd = load_state_dict_file(init.path)
    if isinstance(sd.get("student"), dict):  # a run's checkpoint.pt: its student
        sd = sd["student"]
    own = student.state_dict()
    if set(sd) <= set(own):  # the student's own layout (a previous run's student, an exported trunk)
        _load_exact(student, sd, init)
        return
    adapt = getattr(student, "adapt_timm_state_dict", None)  # ViT students read timm's layout
    if adapt is None:
        raise ValueError(f"student weights {init.id}: keys {_few(sorted(set(sd) - set(own)))} are not the "
                         f"student's; a {type(student).__name__} loads only its own state dict")
    _load_exact(student, adapt(sd), init)


def _load_exact(student: Student, sd: dict[str, torch.Tensor], init: StudentInit) -> None:
    """Every key of `sd` must be the student's with its shape; keys the file lacks must be ones a
    checkpoint may lack (the student's extra prefix tokens, which keep their initialization)."""
    own = student.state_dict()
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
    optional = set(getattr(student, "optional_init_keys", lambda: set())())
    missing = sorted(set(own) - set(sd) - optional)
    if unexpected or shapes or missing:
        parts = [f"unexpected keys {_few(unexpected)}" if unexpected else "",
                 "shapes differ: " + _few([f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in shapes])
                 if shapes else "",
                 f"missing keys {_few(missing)}" if missing else ""]
        raise ValueError(f"student weights {init.id} do not fit student {type(student).__name__}: "
                         + "; ".join(p for p in parts if p))
    student.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in sd.items()}}, strict=True)


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def resample_grid_embed(embed_1NC: torch.Tensor, side: int) -> torch.Tensor:
    """A square grid of position embeddings [1, G*G, C] resampled to [1, side*side, C] (bicubic, as timm's
    loader resamples a checkpoint's position embedding)."""
    from timm.layers import resample_abs_pos_embed

    g = math.isqrt(embed_1NC.shape[1])
    if g * g != embed_1NC.shape[1]:
        raise ValueError(f"cannot resample a non-square position embedding of {embed_1NC.shape[1]} tokens")
    if g == side:
        return embed_1NC
    return resample_abs_pos_embed(embed_1NC, new_size=(side, side), old_size=(g, g), num_prefix_tokens=0)
