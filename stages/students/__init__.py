"""Student networks and per-teacher heads for agglomerative distillation (AM-RADIO, arXiv 2312.06709).

A student is a trunk (`Student`: a timm ViT or E-RADIO) that maps pixels to K summary tokens and dense
features at stride 16; `TeacherHeads` turns that output into one (summary, patches) prediction per teacher.
`build.py` builds a run's student + heads (the one rule for K), `preprocess.py` holds the student's input
normalization. The package only re-exports: every module here imports `Student` from `contract.py`.

Shape legend: B batch, K summary tokens, C channels, h/w feature-map sides (stride 16).
"""

from __future__ import annotations

from stages.students.contract import Student, StudentOutput
from stages.students.heads import HeadTarget, TeacherHeads
from stages.students.registry import build_student, student_names

__all__ = ["HeadTarget", "Student", "StudentOutput", "TeacherHeads", "build_student", "student_names"]
