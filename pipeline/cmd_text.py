"""`pipeline extract-text`: stage one's text side for CLIP-family teachers (stages/extract/text.py).

Encodes prompt sets (class names × templates) with the teacher's text tower and writes them, with the
tower's image-side projection (ln_post, proj), into the teacher's store, for zero-shot classification
(CLIP, arXiv 2103.00020) and open-vocabulary segmentation (MaskCLIP, arXiv 2112.01071) without building
the teacher at evaluation time. In a folder with a params.yaml (dvc.yaml's extract_text stage), the teachers
are extract.text_teachers and the prompt sets the evaluation's: evaluate.zeroshot_classes with
evaluate.zeroshot_templates and evaluate.seg_classes with evaluate.seg_templates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pipeline.defaults import Derived, ParamsOpt, Route, given_on_command_line, routed


def class_sets(p: Any) -> list[tuple[Path, str]]:
    """(class file, templates) of every prompt set params.yaml's evaluation needs."""
    e = p.evaluate
    return [(c, t) for c, t in ((e.zeroshot_classes, e.zeroshot_templates), (e.seg_classes, e.seg_templates))
            if c is not None]


def dataset_class_file(classes: Path) -> Path:
    """A class file as given, or for an evaluation dataset root (a folder holding manifest.parquet built with
    --layout) its class list written as <root>/bench/classes.txt."""
    if not Path(classes).is_dir():
        return classes
    from stages.corpus.layouts import write_class_file
    from store_schema import layout
    from store_schema.manifest import read_manifest

    manifest = read_manifest(layout.manifest_path(classes))
    if manifest.dataset is None or not manifest.dataset.classes:
        raise ValueError(f"{classes} has no class list (its manifest was built without --layout imagefolder|ade20k|"
                         "voc); give a class file or an evaluation dataset root")
    return write_class_file(manifest.dataset, layout.dataset_classes_path(classes))


EXTRACT_TEXT = Route(keys={"teacher": "extract.text_teachers", "root": "store.root", "device": "extract.device",
                           "checkpoint": "extract.checkpoints",
                           "classes": Derived("evaluate.zeroshot_classes, evaluate.seg_classes",
                                              lambda p: [c for c, _ in class_sets(p)]),
                           "templates": Derived("evaluate.zeroshot_templates, evaluate.seg_templates",
                                                lambda p: [t for _, t in class_sets(p)]
                                                or [p.evaluate.zeroshot_templates])},
                     required=("teacher", "classes", "root"))


def extract_text_cmd(
    ctx: typer.Context,
    teacher: Annotated[Optional[list[str]], typer.Option("--teacher", "-t", help="An open_clip teacher whose store exists under ROOT; repeatable. Default: extract.text_teachers.")] = None,
    classes: Annotated[Optional[list[Path]], typer.Option(help="Class file (one class per line; label<TAB>prompt name allowed), or an evaluation dataset root (`pipeline corpus --layout`: its class names). Repeat for several prompt sets.")] = None,
    root: Annotated[Optional[Path], typer.Option(help="Store root holding <teacher>.zarr. Default: store.root.")] = None,
    templates: Annotated[Optional[list[str]], typer.Option(help="Template set of the prompt sets: imagenet (80 CLIP templates), segmentation, simple, or a file with one template per line ({} = class). One for every --classes, or one per --classes in order.")] = None,
    checkpoint: Annotated[Optional[list[str]], typer.Option(help="Local weights (the whole CLIP state dict) if the store was extracted with --checkpoint: PATH (one teacher) or TEACHER=PATH.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Torch device of the text tower.")] = None,
    receipt: Annotated[Optional[Path], typer.Option(help="Write a JSON receipt of what was written here (one teacher only).")] = None,
    params: ParamsOpt = None,
) -> None:
    """Write text embeddings of each CLASSES prompt set and the image-side projection into the teacher's store.

    Flags not given take their values from params.yaml when there is one (printed on stderr)."""
    from pipeline.cmd_extract import parse_teachers, per_teacher_values
    from stages.extract.text import extract_text
    from stages.prompts import prompt_set

    from stages.devices import check_device

    teachers = parse_teachers(teacher)
    if device is not None:
        check_device(device)  # before any text store exists
    if given_on_command_line(ctx, "classes") and not given_on_command_line(ctx, "templates"):
        templates = templates[:1]  # typed class files, default templates: the first set for all of them
    if len(templates) not in (1, len(classes)):
        raise ValueError(f"give one --templates for every --classes, or one per --classes ({len(classes)}), "
                         f"got {len(templates)}")
    if receipt is not None and len(teachers) > 1:
        raise ValueError("--receipt applies to one teacher; extract the others in a separate call")
    checkpoints = per_teacher_values(checkpoint, teachers, Path, "--checkpoint", one_teacher=True)
    sets = [prompt_set(dataset_class_file(c), t) for c, t in zip(classes, templates * len(classes) if len(templates) == 1 else templates)]
    for name in teachers:
        res = extract_text(root, name, sets, checkpoint=checkpoints[name], device=device)
        typer.echo(res.summary_line())
        if receipt is not None:
            receipt.parent.mkdir(parents=True, exist_ok=True)
            receipt.write_text(json.dumps({"teacher": name, "groups": res.groups, "projection": res.projection,
                                           "prompt_sets": [ps.to_dict() for ps in sets]}, indent=2, sort_keys=True)
                               + "\n")
            typer.echo(f"receipt: {receipt}")


def register(app: typer.Typer) -> None:
    """Add `extract-text` to the pipeline CLI."""
    app.command("extract-text", cls=routed(EXTRACT_TEXT))(extract_text_cmd)
