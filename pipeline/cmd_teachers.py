"""`pipeline teachers`: list the teacher registry (AM-RADIO arXiv 2312.06709 / PHI-S arXiv 2410.01680 teachers).

One row per registered teacher: family, architecture, weights and whether they are on this machine,
resolution, patch grid, summary / patch widths, the storage one view of one image costs in a teacher store
at the default codec (≈11.5 bits per value: BitRound(7) + Blosc zstd bitshuffle, DESIGN §5), and license.
Thin over `teacher_rows`, which tests and other commands can call directly.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.errors import PipelineCommand

if TYPE_CHECKING:  # stage code (torch) is imported inside the functions: `pipeline --help` stays fast
    from stages.teachers.spec import TeacherSpec

STORED_BITS_PER_VALUE = 11.5  # measured for the default codec (DESIGN §5)


class OutputFormat(str, Enum):
    TABLE = "table"
    JSON = "json"


def stored_bytes_per_view(spec: TeacherSpec, *, bits_per_value: float = STORED_BITS_PER_VALUE) -> int:
    """Approximate stored bytes of one view of one image: (summary + h·w patch values) · bits / 8."""
    h, w = spec.grid
    return round((spec.summary_dim + h * w * spec.patch_dim) * bits_per_value / 8)


def teacher_rows(*, names: list[str] | None = None) -> list[dict]:
    """The registry as rows of plain values (unknown names raise ValueError listing the valid ones)."""
    from stages.teachers.registry import TEACHERS, get_teacher_spec, weights_available

    keys = names or list(TEACHERS)  # a name, or a store key <teacher>@<side>: the teacher at that resolution
    specs = [get_teacher_spec(n) for n in keys]
    rows = []
    for key, spec in zip(keys, specs):
        h, w = spec.grid
        rows.append({
            "name": key, "family": spec.family.value, "arch": spec.arch,
            "weights": f"{spec.weights.value}:{spec.weights_id}" if spec.weights_id else spec.weights.value,
            "available": weights_available(spec), "resolution": spec.resolution, "resize": spec.resize.value,
            "grid": f"{h}x{w}",
            "summary_dim": spec.summary_dim, "patch_dim": spec.patch_dim,
            "bytes_per_view": stored_bytes_per_view(spec), "license": spec.license,
        })
    return rows


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of `teacher_rows` output."""
    cols = ["name", "family", "arch", "weights", "available", "resolution", "resize", "grid", "summary_dim",
            "patch_dim", "bytes_per_view", "license"]
    cells = [[_human_bytes(r[c]) if c == "bytes_per_view" else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(wd) for v, wd in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def teachers_cli(
    names: Annotated[list[str] | None, typer.Argument(
        help="Teachers to list (default: the whole registry); <teacher>@<side> shows a teacher at another input "
             "side (the store `pipeline extract --teacher <teacher>@<side>` writes). Unknown names are an error "
             "listing valid ones.")] = None,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="'table' for people, 'json' (a list of row objects) for scripts.")] = OutputFormat.TABLE,
) -> None:
    """List registered teachers: family, architecture, weights (and whether they are on this machine),
    resolution, patch grid, summary/patch widths, stored bytes per image per view (≈11.5 bits/value), license."""
    rows = teacher_rows(names=names)
    if output_format is OutputFormat.JSON:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(format_table(rows))
        typer.echo(f"\nbytes_per_view: one image, one view, at ≈{STORED_BITS_PER_VALUE} bits per stored value. "
                   "available: random | cached (hub cache) | missing (pass --checkpoint or fill the cache).")


def register(app: typer.Typer) -> None:
    """Add the `teachers` command to the pipeline app."""
    app.command("teachers", cls=PipelineCommand)(teachers_cli)
