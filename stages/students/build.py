"""A run's student trunk and per-teacher heads, built from its recipe (AM-RADIO, arXiv 2312.06709).

The one place the student's K (summary tokens) is decided and the one JSON form of the heads' shapes:
training builds the models here, and every reader of a run (checkpoint, export) rebuilds them here from
what config.json / the export's metadata record, so K and the head shapes are never stored twice.
"""

from __future__ import annotations

from typing import Any, Protocol

from stages.students.contract import Student, StudentOptions
from stages.students.heads import HeadTarget, TeacherHeads
from stages.students.registry import build_student, student_max_summary_tokens


class StudentRecipe(Protocol):
    """What building a student needs from a run's config (stages.distill.config.DistillConfig has it)."""

    student: str
    img_size: int
    num_summary_tokens: int | None

    @property
    def student_options(self) -> StudentOptions: ...


def summary_tokens_for(recipe: StudentRecipe, targets: list[HeadTarget]) -> int:
    """The student's K: recipe.num_summary_tokens when set, else automatic. AM-RADIO gives the student one
    summary (CLS) token per teacher that has a summary, so automatic K is that count, capped by what the
    student family supports (E-RADIO: 1, its spatial mean) and at least 1."""
    if recipe.num_summary_tokens is not None:
        return recipe.num_summary_tokens
    wanted = max(1, sum(1 for t in targets if t.summary_dim > 0))
    cap = student_max_summary_tokens(recipe.student)
    return wanted if cap is None else min(wanted, cap)


def build_models(recipe: StudentRecipe, targets: list[HeadTarget]) -> tuple[Student, TeacherHeads]:
    """Student (K summary tokens from `summary_tokens_for`) and heads with random weights (seeded by the
    caller)."""
    student = build_student(recipe.student, img_size=recipe.img_size,
                            num_summary_tokens=summary_tokens_for(recipe, targets), options=recipe.student_options)
    heads = TeacherHeads(student.embed_dim, targets, num_summary_tokens=student.num_summary_tokens)
    return student, heads


def heads_to_json(targets: list[HeadTarget]) -> list[dict[str, Any]]:
    """The heads' shapes as config.json records them."""
    return [{"name": h.name, "summary_dim": h.summary_dim, "patch_dim": h.patch_dim, "grid": list(h.grid)}
            for h in targets]


def heads_from_json(heads: list[dict[str, Any]]) -> list[HeadTarget]:
    """Inverse of `heads_to_json` (KeyError / ValueError / TypeError on a malformed record)."""
    return [HeadTarget(str(h["name"]), int(h["summary_dim"]), int(h["patch_dim"]), tuple(int(x) for x in h["grid"]))
            for h in heads]
