"""The one registry of student trunks (AM-RADIO, arXiv 2312.06709: ViT and E-RADIO students).

Built explicitly from the family size tables: `vit_<size>` from `vit.VIT_SIZES` keys, `eradio_<size>`
from `eradio.ERADIO_SIZES`. Nothing registers itself on import.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from stages.students import Student
from stages.students.eradio import ERADIO_SIZES, build_eradio
from stages.students.vit import VIT_SIZES, build_vit


class StudentFamily(str, Enum):
    VIT = "vit"
    ERADIO = "eradio"


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
_MAX_SUMMARY_TOKENS: dict[StudentFamily, int | None] = {StudentFamily.VIT: None, StudentFamily.ERADIO: 1}


def student_names() -> list[str]:
    """All registered student names, sorted."""
    return sorted(_STUDENTS)


def build_student(name: str, *, img_size: int, num_summary_tokens: int | None = None) -> Student:
    """Build the registered student `name` with random weights for square inputs of side `img_size`.

    num_summary_tokens: K summary tokens (ViT: CLS + K-1 register tokens; default 1). E-RADIO has
    exactly one (the spatial mean), so it accepts only None or 1.
    """
    if name not in _STUDENTS:
        raise ValueError(f"unknown student {name!r}; valid: {student_names()}")
    entry = _STUDENTS[name]
    if entry.family is StudentFamily.VIT:
        k = 1 if num_summary_tokens is None else num_summary_tokens
        return build_vit(entry.size, img_size=img_size, num_summary_tokens=k)
    assert entry.family is StudentFamily.ERADIO
    if num_summary_tokens not in (None, 1):
        raise ValueError(
            f"E-RADIO student {name!r} has one summary token (the spatial mean of its features); "
            f"got num_summary_tokens={num_summary_tokens}"
        )
    return build_eradio(entry.size, img_size=img_size)


def student_max_summary_tokens(name: str) -> int | None:
    """The most summary tokens K student `name` can have: None when unbounded (ViT: CLS + register
    tokens, one per summary teacher in AM-RADIO), 1 for E-RADIO (its summary is the spatial mean)."""
    if name not in _STUDENTS:
        raise ValueError(f"unknown student {name!r}; valid: {student_names()}")
    return _MAX_SUMMARY_TOKENS[_STUDENTS[name].family]
