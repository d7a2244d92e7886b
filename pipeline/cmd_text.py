"""`pipeline extract-text`: stage one's text side for CLIP-family teachers (stages/extract/text.py).

Encodes prompt sets (class names × templates) with the teacher's text tower and writes them, with the
tower's image-side projection (ln_post, proj), into the teacher's store, for zero-shot classification
(CLIP, arXiv 2103.00020) and open-vocabulary segmentation (MaskCLIP, arXiv 2112.01071) without building
the teacher at evaluation time. `pipeline extract-text-stage` does the same from params.yaml (dvc.yaml).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pipeline.errors import fail

if TYPE_CHECKING:
    from pipeline.params import Params


def _run(root: Path, teacher: str, class_sets: list[tuple[Path, str]], *, checkpoint: Path | None, device: str,
         receipt: Path | None) -> None:
    from stages.extract.text import extract_text
    from stages.prompts import prompt_set
    from stages.teachers.errors import MissingWeightsError
    from stages.teachers.text_tower import MissingTokenizerError
    from store_schema.errors import StoreError

    try:
        sets = [prompt_set(classes, templates) for classes, templates in class_sets]
        res = extract_text(root, teacher, sets, checkpoint=checkpoint, device=device)
    except (ValueError, FileNotFoundError, StoreError, MissingWeightsError, MissingTokenizerError) as e:
        raise fail(str(e)) from e
    typer.echo(res.summary_line())
    if receipt is not None:
        receipt.parent.mkdir(parents=True, exist_ok=True)
        receipt.write_text(json.dumps({"teacher": teacher, "groups": res.groups, "projection": res.projection,
                                       "prompt_sets": [ps.to_dict() for ps in sets]}, indent=2, sort_keys=True)
                           + "\n")
        typer.echo(f"receipt: {receipt}")


def extract_text_cmd(
    ctx: typer.Context,
    teacher: Annotated[str, typer.Option(help="An open_clip teacher whose store exists under ROOT.")],
    classes: Annotated[list[Path], typer.Option(help="Class file (one class per line; label<TAB>prompt name "
                                                     "allowed). Repeat for several prompt sets.")],
    root: Annotated[Path, typer.Option(help="Store root holding <teacher>.zarr.")] = Path("data/store"),
    templates: Annotated[str, typer.Option(help="Template set: imagenet (80 CLIP templates), segmentation, simple, "
                                                "or a file with one template per line ({} = class).")] = "imagenet",
    checkpoint: Annotated[Optional[Path], typer.Option(help="Local weights (the whole CLIP state dict) if the "
                                                            "store was extracted with --checkpoint.")] = None,
    device: Annotated[str, typer.Option(help="Torch device of the text tower.")] = "cpu",
    receipt: Annotated[Optional[Path], typer.Option(help="Write a JSON receipt of what was written here.")] = None,
) -> None:
    """Write text embeddings of each CLASSES prompt set and the image-side projection into the teacher's store.

    --root and --device not given take their values from ./params.yaml when there is one."""
    from pipeline.flag_defaults import TEXT, fill_from_params

    v = fill_from_params(ctx, locals(), TEXT)
    root, device = v["root"], v["device"]
    _run(root, teacher, [(c, templates) for c in classes], checkpoint=checkpoint, device=device, receipt=receipt)


def extract_text_stage_cmd(
    teacher: Annotated[str, typer.Option(help="The teacher (one of extract.text_teachers).")],
    params: Annotated[Path, typer.Option(help="params.yaml the stage is configured from.")] = Path("params.yaml"),
    receipt: Annotated[Optional[Path], typer.Option(help="Write the JSON receipt here (what DVC tracks).")] = None,
) -> None:
    """extract-text for the prompt sets of evaluate.zeroshot_classes / evaluate.seg_classes (dvc.yaml)."""
    from pipeline.params import read_params

    try:
        p = read_params(params)
        if teacher not in p.extract.text_teachers:
            raise ValueError(f"--teacher {teacher!r} is not in extract.text_teachers {p.extract.text_teachers}")
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from e
    _run(p.store.root, teacher, text_class_sets(p), checkpoint=p.extract.checkpoints.get(teacher),
         device=p.extract.device, receipt=receipt)


def text_class_sets(p: Params) -> list[tuple[Path, str]]:
    """(class file, templates) of every prompt set params.yaml's evaluation needs."""
    e = p.evaluate
    return [(c, t) for c, t in ((e.zeroshot_classes, e.zeroshot_templates), (e.seg_classes, e.seg_templates))
            if c is not None]


def register(app: typer.Typer) -> None:
    """Add `extract-text` and `extract-text-stage` (only dvc.yaml runs it: hidden from --help) to the CLI."""
    app.command("extract-text")(extract_text_cmd)
    app.command("extract-text-stage", hidden=True)(extract_text_stage_cmd)
