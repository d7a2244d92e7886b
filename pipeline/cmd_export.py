"""`pipeline export RUN [--onnx] [--no-timm]`: a thin command over stages/distill/user_export.py (the trained
agglomerative student of AM-RADIO, arXiv 2312.06709, with PHI-S's inverse map folded into its heads, arXiv
2410.01680, in the forms users load: safetensors, timm layout, ONNX)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.defaults import PipelineCommand


def export(
    run: Annotated[Path, typer.Argument(help="Run directory written by `pipeline distill`.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Also write RUN/export.onnx (dynamic batch; backbone and "
                                                      "every adaptor's outputs) and check it under onnxruntime "
                                                      "against PyTorch (needs the [onnx] extra).")] = False,
    timm: Annotated[bool, typer.Option("--timm/--no-timm", help="For a ViT student, also write its trunk in "
                                                                "timm's layout to RUN/timm (model.safetensors + "
                                                                "config.json).")] = True,
) -> None:
    """Write RUN/export.safetensors (student + teacher-space heads + preprocessing) from the last checkpoint,
    the trunk in timm's layout (ViT students) and, with --onnx, RUN/export.onnx."""
    from stages.distill.user_export import export_user_formats

    files = export_user_formats(run, onnx=onnx, timm=timm)  # user errors: printed by PipelineCommand
    typer.echo(f"export: {files.safetensors}")
    kept = {p for p in (files.timm, files.onnx) if p is not None}
    for path in files.replaced:
        if path not in kept and path.with_suffix("") not in kept:  # export.onnx.data goes with export.onnx
            typer.echo(f"removed: {path} (made from the earlier export; not asked for this time)")
    if files.timm is not None:
        typer.echo(f"timm: {files.timm} (timm.create_model('local-dir:{files.timm}', pretrained=True))")
    if files.onnx is not None and files.onnx_check is not None:
        check = files.onnx_check
        typer.echo(f"onnx: {files.onnx} (onnxruntime vs PyTorch at batch {', '.join(map(str, check.batches))}: "
                   f"max deviation {check.worst:.1e}, {len(check.deviation)} outputs)")


def register(app: typer.Typer) -> None:
    """Add the export command to the pipeline app."""
    app.command("export", cls=PipelineCommand)(export)
