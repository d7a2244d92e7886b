"""The one registry of student trunks (AM-RADIO, arXiv 2312.06709: ViT and E-RADIO students).

Built explicitly from the family size tables: `vit_<size>` from `vit.VIT_SIZES` keys, `eradio_<size>`
from `eradio.ERADIO_SIZES`. Nothing registers itself on import. Any other timm ViT is reachable by its
timm name in the explicit `timm:` namespace (`timm:vit_small_patch16_224`), built from scratch with patch 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import timm

from stages.students.contract import Student, StudentOptions
from stages.students.eradio import ERADIO_SIZES, build_eradio
from stages.students.vit import PATCH_SIZE, VIT_SIZES, ViTStudent, build_vit


class StudentFamily(str, Enum):
    VIT = "vit"  # a row of VIT_SIZES
    TIMM_VIT = "timm_vit"  # any timm VisionTransformer by name ("timm:<name>")
    ERADIO = "eradio"


TIMM_NAMESPACE = "timm:"


@dataclass(frozen=True)
class StudentEntry:
    """A registered student: its family and the key of that family's size table."""

    family: StudentFamily
    size: str


def _entries() -> dict[str, StudentEntry]:
    entries = {name: StudentEntry(StudentFamily.VIT, name) for name in VIT_SIZES}
    entries.update({f"eradio_{size}": StudentEntry(StudentFamily.ERADIO, size) for size in ERADIO_SIZES})
    return entries


_STUDENTS: dict[str, StudentEntry] = _entries()

# Per family: the most summary tokens a student supports (None: no limit).
_MAX_SUMMARY_TOKENS: dict[StudentFamily, int | None] = {
    StudentFamily.VIT: None, StudentFamily.TIMM_VIT: None, StudentFamily.ERADIO: 1,
}


def student_names() -> list[str]:
    """All registered student names, sorted."""
    return sorted(_STUDENTS)


def _entry(name: str) -> StudentEntry:
    """The registry entry for `name` (a registered name or `timm:<timm ViT name>`); ValueError otherwise."""
    if name in _STUDENTS:
        return _STUDENTS[name]
    if name.startswith(TIMM_NAMESPACE):
        timm_name = name[len(TIMM_NAMESPACE):]
        vits = timm.list_models("vit_*")
        if timm_name not in vits:
            raise ValueError(f"{timm_name!r} is not a timm ViT; timm has {len(vits)}, e.g. "
                             f"{', '.join(vits[:5])} (see timm.list_models('vit_*'))")
        return StudentEntry(StudentFamily.TIMM_VIT, timm_name)
    raise ValueError(f"unknown student {name!r}; valid: {student_names()}, or {TIMM_NAMESPACE}<name> for any "
                     "timm ViT (timm.list_models('vit_*'))")


def build_student(name: str, *, img_size: int, num_summary_tokens: int | None = None,
                  options: StudentOptions = StudentOptions()) -> Student:
    """Build the student `name` (registered, or `timm:<timm ViT name>`) with random weights for square inputs
    of side `img_size`.

    num_summary_tokens: K summary tokens (ViT: CLS + K-1 register tokens; default 1). E-RADIO has
    exactly one (the spatial mean), so it accepts only None or 1. options: CPE, windowed attention and
    activation checkpointing (ViT students only: E-RADIO's BatchNorm layers would update their running
    statistics twice under recomputation, and it has its own windows and no position embedding).
    """
    entry = _entry(name)
    k = 1 if num_summary_tokens is None else num_summary_tokens
    if entry.family is StudentFamily.VIT:
        return build_vit(entry.size, img_size=img_size, num_summary_tokens=k, options=options)
    if entry.family is StudentFamily.TIMM_VIT:  # the stride-16 student contract: patch 16 whatever the default
        return ViTStudent(entry.size, img_size=img_size, num_summary_tokens=k, options=options, patch_size=PATCH_SIZE)
    assert entry.family is StudentFamily.ERADIO
    if not options.is_default:
        raise ValueError(f"student {name!r}: CPE, windowed attention and activation checkpointing are options of "
                         f"ViT students; E-RADIO has its own windowed attention and no position embedding")
    if num_summary_tokens not in (None, 1):
        raise ValueError(
            f"E-RADIO student {name!r} has one summary token (the spatial mean of its features); "
            f"got num_summary_tokens={num_summary_tokens}"
        )
    return build_eradio(entry.size, img_size=img_size)


def student_max_summary_tokens(name: str) -> int | None:
    """The most summary tokens K student `name` can have: None when unbounded (ViT: CLS + register
    tokens, one per summary teacher in AM-RADIO), 1 for E-RADIO (its summary is the spatial mean)."""
    return _MAX_SUMMARY_TOKENS[_entry(name).family]


def student_pretrained_name(name: str) -> str | None:
    """The timm pretrained weights ("<arch>.<tag>", or an architecture whose default tag timm picks) that
    `--student-weights pretrained` loads into student `name`; None when there are none (E-RADIO, sizes with
    overrides timm publishes no weights for)."""
    entry = _entry(name)
    if entry.family is StudentFamily.VIT:
        return VIT_SIZES[entry.size].pretrained
    if entry.family is StudentFamily.TIMM_VIT:
        return entry.size
    return None
