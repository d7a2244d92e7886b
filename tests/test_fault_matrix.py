"""The fault matrix (tests/fault_matrix.py) names real tests, and docs/RELIABILITY.md lists exactly its rows."""

from __future__ import annotations

import ast
from pathlib import Path

from fault_matrix import FAULTS

REPO = Path(__file__).resolve().parents[1]


def test_every_row_names_an_existing_test() -> None:
    for row in FAULTS:
        file, name = row.test.split("::")
        tree = ast.parse((REPO / file).read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert name in names and name.startswith("test_"), row.test
    assert len({row.test for row in FAULTS}) == len(FAULTS)


def test_docs_list_the_same_rows_with_their_count() -> None:
    doc = (REPO / "docs" / "RELIABILITY.md").read_text()
    assert f"{len(FAULTS)} faults" in doc
    rows = [ln for ln in doc.splitlines() if ln.startswith("| ") and "`tests/" in ln]
    assert [r.split("`")[-2] for r in rows] == [row.test for row in FAULTS]
