"""Command-line flags a user left out, taken from ./params.yaml (read by the one reader, pipeline/params.py).

The design's commands are typed as short as `pipeline extract --teacher dinov2_g` or
`pipeline distill --norm phis`: in a folder with a params.yaml (the offline sweep of the PHI-S paper,
arXiv 2410.01680, over an AM-RADIO store, arXiv 2312.06709), every flag not given on the command line
takes its value from that file. Flags given on the command line always win. The command prints, on
stderr, which values came from which file. Without a params.yaml, a flag that has no built-in default
is an error naming the flag and the params.yaml key that would have supplied it.

Each command declares its table below: flag (the Python parameter name) -> (params key, getter). The
getters turn the typed Params into the value the command-line option would carry. Only typer, the
standard library and pipeline.params are imported here (`pipeline --help` stays fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import typer

from pipeline.errors import fail
from pipeline.params import Params, read_params

PARAMS_FILE = Path("params.yaml")  # looked up in the current folder, where the user runs the command

Getter = Callable[[Params], Any]
Table = dict[str, tuple[str, Getter]]

# ---- one table per command: flag -> (params key, getter) ---------------------------------------------
CORPUS: Table = {
    "source": ("corpus.source", lambda p: p.corpus.source),
    "out": ("store.root", lambda p: p.store.root),
    "views": ("corpus.views", lambda p: p.corpus.views),
    "view_seed": ("corpus.view_seed", lambda p: p.corpus.view_seed),
    "val_fraction": ("corpus.val_fraction", lambda p: p.corpus.val_fraction),
    "min_side": ("corpus.min_side", lambda p: p.corpus.min_side),
}
EXTRACT: Table = {
    "teacher": ("extract.teachers", lambda p: list(p.extract.teachers)),
    "root": ("store.root", lambda p: p.store.root),
    "batch_size": ("extract.batch_size", lambda p: p.extract.batch_size),
    "shard_size": ("extract.shard_size", lambda p: p.extract.shard_size),
    "keepbits": ("extract.keepbits", lambda p: str(p.extract.keepbits)),
    "workers": ("extract.workers", lambda p: p.extract.workers),
    "ray_address": ("extract.ray_address", lambda p: p.extract.ray_address),
    "device": ("extract.device", lambda p: p.extract.device),
    "decode_ahead": ("extract.decode_ahead", lambda p: p.extract.decode_ahead),
    "cpus_per_worker": ("extract.cpus_per_worker", lambda p: p.extract.cpus_per_worker),
    # per teacher: the command picks each teacher's entry (a teacher without one keeps the default)
    "storage_grid": ("extract.storage_grids", lambda p: dict(p.extract.storage_grids) or None),
    "checkpoint": ("extract.checkpoints", lambda p: dict(p.extract.checkpoints) or None),
}
STORE: Table = {  # store info / verify / transcode
    "root": ("store.root", lambda p: p.store.root),
}
DISTILL: Table = {
    "teachers": ("extract.teachers", lambda p: list(p.extract.teachers)),
    "student": ("distill.student", lambda p: p.distill.student),
    "root": ("store.root", lambda p: p.store.root),
    "out": ("distill.runs_dir", lambda p: p.distill.runs_dir),
    "steps": ("distill.steps", lambda p: p.distill.steps),
    "batch_size": ("distill.batch_size", lambda p: p.distill.batch_size),
    "lr": ("distill.lr", lambda p: p.distill.lr),
    "warmup_steps": ("distill.warmup_steps", lambda p: p.distill.warmup_steps),
    "img_size": ("distill.img_size", lambda p: p.distill.img_size),
    "num_summary_tokens": ("distill.num_summary_tokens", lambda p: p.distill.num_summary_tokens),
    "seed": ("distill.seeds", lambda p: p.distill.seeds[0]),  # the first seed of the sweep
    "summary_loss": ("distill.summary_loss", lambda p: p.summary_losses[0]),  # the first of a summary-loss sweep
    "grad_clip": ("distill.grad_clip", lambda p: p.distill.grad_clip),
    "device": ("distill.device", lambda p: p.distill.device),
    "workers": ("distill.num_workers", lambda p: p.distill.num_workers),
    "loader_memory": ("distill.loader_memory", lambda p: p.distill.loader_memory),
    "student_views": ("distill.student_views", lambda p: p.distill.student_views),
    "log_every": ("distill.log_every", lambda p: p.distill.log_every),
    "ckpt_every": ("distill.ckpt_every", lambda p: p.distill.ckpt_every),
}
EVALUATE: Table = {
    "split": ("evaluate.split", lambda p: p.evaluate.split),
    "batch_size": ("evaluate.batch_size", lambda p: p.evaluate.batch_size),
    "probe_labels": ("evaluate.probe_labels", lambda p: p.evaluate.probe_labels),
    "knn_k": ("evaluate.knn_k", lambda p: p.evaluate.knn_k),
    "knn_temperature": ("evaluate.knn_temperature", lambda p: p.evaluate.knn_temperature),
    "knn_feature": ("evaluate.knn_feature", lambda p: p.evaluate.knn_feature),
    "zeroshot_teacher": ("evaluate.zeroshot_teacher", lambda p: p.evaluate.zeroshot_teacher),
    "device": ("distill.device", lambda p: p.distill.device),
    "zeroshot_classes": ("evaluate.zeroshot_classes", lambda p: p.evaluate.zeroshot_classes),
    "zeroshot_templates": ("evaluate.zeroshot_templates", lambda p: p.evaluate.zeroshot_templates),
    "seg_masks": ("evaluate.seg_masks", lambda p: p.evaluate.seg_masks),
    "seg_classes": ("evaluate.seg_classes", lambda p: p.evaluate.seg_classes),
    "seg_templates": ("evaluate.seg_templates", lambda p: p.evaluate.seg_templates),
    "seg_probe_steps": ("evaluate.seg_probe_steps", lambda p: p.evaluate.seg_probe_steps),
}
REPORT: Table = {
    "runs": ("distill.runs_dir + distill.norms x distill.seeds",
             lambda p: [p.run_dir(n, s, sl) for n, s, sl in p.sweep_runs()]),
    "out": ("report.out", lambda p: p.report.out),
    "root": ("store.root", lambda p: p.store.root),
}
TEXT: Table = {
    "root": ("store.root", lambda p: p.store.root),
    "device": ("extract.device", lambda p: p.extract.device),
}
VIEWS: Table = {
    "size": ("distill.img_size", lambda p: [p.distill.img_size]),
    "root": ("store.root", lambda p: p.store.root),
    "workers": ("extract.workers", lambda p: p.extract.workers),
    "ray_address": ("extract.ray_address", lambda p: p.extract.ray_address),
}
TRANSCODE: Table = {
    "root": ("store.root", lambda p: p.store.root),
}
# -------------------------------------------------------------------------------------------------------


# typer ships its own copy of click: compare parameter kinds and sources by name, not by class
_NOT_GIVEN = ("DEFAULT", "DEFAULT_MAP")


def _flag(ctx: typer.Context, name: str) -> str:
    """The option's spelling on the command line (--shard-size), or the argument's metavar (SOURCE)."""
    for param in ctx.command.params:
        if param.name == name:
            return param.opts[0] if param.param_type_name == "option" else name.upper()  # the first spelling
    raise AssertionError(f"{ctx.command.name} has no parameter {name!r}")  # a table names a parameter that is not there


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in _NOT_GIVEN


def given_on_command_line(ctx: typer.Context, name: str) -> bool:
    """True when the user typed this flag (not a built-in default, not a params.yaml value)."""
    return _given(ctx, name)


def fill_from_params(ctx: typer.Context, values: dict[str, Any], table: Table, *,
                     required: tuple[str, ...] = (), params_file: Path = PARAMS_FILE) -> dict[str, Any]:
    """``values`` (the command's parameters) with every flag not given on the command line replaced by
    its params.yaml value. Prints one line on stderr naming the file and the values it supplied.

    ``required``: flags without a built-in default; still missing afterwards -> one error line
    naming the flag and the params.yaml key (and that there is no params.yaml here), exit status 2.
    A params.yaml that does not validate -> one error line with the reader's message, exit status 2."""
    out = dict(values)
    missing = [name for name in table if not _given(ctx, name)]
    taken: list[str] = []
    if missing and params_file.is_file():
        try:
            p = read_params(params_file)
        except ValueError as e:
            raise fail(f"{params_file.resolve()} (read for the flags not given): {e}") from None
        for name in missing:
            key, get = table[name]
            value = get(p)
            if value is None:
                continue  # params.yaml says "default" (null / empty): keep the command's own default
            out[name] = value
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            taken.append(f"{_flag(ctx, name)} {shown} ({key})")
    if taken:
        typer.echo(f"from {params_file.resolve()}: " + "; ".join(taken), err=True)
    for name in required:
        if out.get(name) in (None, [], ""):
            key = table[name][0]
            where = (f"{params_file.resolve()} does not set it" if params_file.is_file()
                     else f"there is no {params_file} in {Path.cwd()}")
            kind = "option" if _flag(ctx, name).startswith("-") else "argument"
            raise fail(f"missing {kind} {_flag(ctx, name)}: give it on the command line, or run where a "
                       f"params.yaml sets {key} ({where})")
    return out
