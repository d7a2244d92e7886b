"""The documentation stands alone: no file of the project cites documents outside the repository."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = ("../shared", "DESIGN.md", "STYLE.md")


def test_no_project_file_cites_documents_outside_the_repository() -> None:
    files = [REPO / n for n in ("params.yaml", "dvc.yaml", "Makefile", "README.md")]
    for folder in ("docs", "configs", "pipeline", "stages", "store_schema", "tests", "benchmarks"):
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in {".md", ".py", ".yaml", ".yml"}]
    offenders = [f"{p.relative_to(REPO)}: {name}" for p in files if p.is_file() and p != Path(__file__)
                 for name in OUTSIDE if name in p.read_text(errors="replace")]
    assert offenders == []


def test_docs_cover_the_science_fidelity_toolchain_and_the_export() -> None:
    science = (REPO / "docs" / "SCIENCE.md").read_text()
    for needed in ("arXiv 2312.06709", "arXiv 2410.01680", "## Storage fidelity", "## Toolchain notes",
                   "α = (trace Σ / C)^-1/2", "Hadamard"):
        assert needed in science, needed
    export = (REPO / "docs" / "EXPORT.md").read_text()
    assert "load_export" in export and "0.485, 0.456, 0.406" in export and "student_pixels" in export
    from stages.students.preprocess import STUDENT_MEAN, STUDENT_STD  # the documented normalization is the code's

    assert str(tuple(STUDENT_MEAN)) in export and str(tuple(STUDENT_STD)) in export
