"""`pipeline distill`: a thin command over stages/distill (store-fed agglomerative
distillation, AM-RADIO arXiv 2312.06709, with PHI-S target normalization, arXiv 2410.01680).

`distill` trains a student + per-teacher heads from <root>/<teacher>.zarr into <out>/<run-name>
(config.json, checkpoint.pt, metrics.jsonl, export.safetensors). Launched by torchrun (WORLD_SIZE > 1 in
the environment) it trains data-parallel; --batch-size is then per process. `export` re-writes a run's
export.safetensors (denormalization folded into the heads) from its latest checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pipeline.errors import fail

if TYPE_CHECKING:  # stage imports stay lazy (inside the commands): `pipeline --help` must not import torch
    from stages.distill.config import DistillConfig

# The NormVariant CLI names, spelled here so the help text needs no torch import (a test keeps them equal).
NORM_NAMES = ("mse", "cosine", "hyb_mse", "hyb_smoothl1", "global_std", "standardize", "pca_w", "zca", "hca",
              "phis")


def parse_teacher_weights(text: str) -> dict[str, float]:
    """"a=1,b=2.5" -> {"a": 1.0, "b": 2.5}; empty text -> {}."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--teacher-weights entry {item!r} is not NAME=NUMBER (e.g. dinov2=1,sam=0.5)") from None
    return out


def resolve_config(*, norm: str, student: str, teachers: str | list[str], root: Path, out: Path, run_name: str | None,
                   **options: object) -> "DistillConfig":
    """The DistillConfig a command line asks for (run directory <out>/<run_name or norm>); an unknown
    --norm raises ValueError listing the valid names."""
    from stages.distill.config import DistillConfig
    from stages.normalize import NormVariant

    names = list(dict.fromkeys(t.strip() for v in ([teachers] if isinstance(teachers, str) else teachers)
                               for t in v.split(",") if t.strip()))  # repeated options and comma lists
    weights = parse_teacher_weights(str(options.pop("teacher_weights") or ""))
    variant = NormVariant.parse(norm)
    return DistillConfig(student=student, teachers=tuple(names), root=root, out_dir=out / (run_name or variant.value),
                         norm=variant, teacher_weights=weights, **options)  # type: ignore[arg-type]


def distill(
    ctx: typer.Context,
    teachers: Annotated[Optional[list[str]], typer.Option("--teachers", "--teacher", "-t", help="Teacher names, comma-separated or the option repeated (--teacher a --teacher b, as `pipeline extract` takes them); each needs <root>/<name>.zarr. Default: extract.teachers of ./params.yaml.")] = None,
    norm: Annotated[str, typer.Option(help="Target normalization: " + ", ".join(NORM_NAMES))] = "phis",
    student: Annotated[str, typer.Option(help="Student: a registered name (vit_tiny_test, vit_b16, vit_l16, vit_h16, eradio_{tiny_test,xt,t,s,b,l}) or timm:<name> for any timm ViT, built from scratch at patch 16.")] = "vit_tiny_test",
    root: Annotated[str, typer.Option(help="Store root holding manifest.parquet and the teacher stores: a folder or an fsspec URL (s3://bucket/prefix).")] = "store",
    out: Annotated[Path, typer.Option(help="Runs folder; the run goes to <out>/<run-name>.")] = Path("runs"),
    run_name: Annotated[str | None, typer.Option(help="Run directory name (default: the --norm name).")] = None,
    steps: Annotated[int, typer.Option(help="Optimization steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Batch per process (global batch = this x processes).")] = 32,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (linear warmup, then cosine).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (not on biases, norms, cls / register tokens, position embeddings).")] = 0.05,
    warmup_steps: Annotated[int, typer.Option(help="Linear warmup steps.")] = 50,
    teacher_weights: Annotated[str, typer.Option(help="Per-teacher loss weights, e.g. a=1,b=2 (default 1).")] = "",
    summary_weight: Annotated[float, typer.Option(help="Weight of every summary (CLS) loss.")] = 1.0,
    feature_weight: Annotated[float, typer.Option(help="Weight of every dense feature loss.")] = 1.0,
    summary_loss: Annotated[str, typer.Option(help="Summary (CLS) loss: cosine (on raw summaries, every variant, as in AM-RADIO / PHI-S) or variant (the --norm's normalization and loss).")] = "cosine",
    grad_clip: Annotated[float, typer.Option(help="Gradient-norm clip (0: off, the default; a fixed clip binds differently per variant). The clipped share of steps is logged as clip_frac.")] = 0.0,
    img_size: Annotated[int, typer.Option(help="Student input side in pixels.")] = 224,
    num_summary_tokens: Annotated[Optional[int], typer.Option(
        help="Student summary (CLS) tokens K (default: automatic, one per teacher with a summary; "
             "E-RADIO has 1).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialization and of the sample order.")] = 0,
    device: Annotated[str, typer.Option(help="Torch device (cpu, cuda, cuda:1); bf16 autocast on CUDA.")] = "cpu",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes (0: load in the main process).")] = 2,
    shuffle_block: Annotated[int, typer.Option(
        help="Shards whose samples are shuffled together each epoch (the loader holds about this many).")] = 4,
    loader_memory: Annotated[str, typer.Option(
        help="Memory the loader may hold for decoded store units, all its workers together (8GiB, 512MiB, ...); "
             "about one --shuffle-block of units must fit, the error says how much.")] = "8GiB",
    student_views: Annotated[str, typer.Option(
        help="Where the student's views come from: auto (the store `pipeline views --size <img-size>` renders, "
             "when complete; else decode), store (that store or an error), decode (the image files). Same "
             "pixels either way.")] = "auto",
    log_every: Annotated[int, typer.Option(help="Write metrics.jsonl every this many steps.")] = 10,
    ckpt_every: Annotated[int, typer.Option(help="Also checkpoint every this many steps (0: off).")] = 0,
    ckpt_minutes: Annotated[float, typer.Option(help="Checkpoint whenever this many minutes passed since the last "
                                                     "(0: off). Ctrl-C / SIGTERM always checkpoints first.")] = 10.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its checkpoint.pt (same --steps).")] = False,
    extend: Annotated[bool, typer.Option("--extend", help="With --resume and more --steps: continue a run on a "
                                                          "schedule recomputed for the new total (recorded in "
                                                          "config.json); without it other steps are refused.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="If another run is training into the same run directory (it holds the directory's lease), wait for it instead of failing at once.")] = False,
    wait_timeout: Annotated[Optional[float], typer.Option(help="With --wait: give up after this many seconds (default: wait as long as it takes).")] = None,
) -> None:
    """Train a student and per-teacher heads from the feature store (never runs a teacher).

    Flags not given take their values from ./params.yaml when there is one (printed on stderr)."""
    from pipeline.flag_defaults import DISTILL, fill_from_params
    from stages.distill.run_dir import checkpoint_path
    from stages.distill.ddp import init_from_env
    from stages.distill.train import train
    from store_schema.errors import StoreError
    from store_schema.lease import LeaseOptions

    v = fill_from_params(ctx, locals(), DISTILL, required=("teachers",))
    try:
        config = resolve_config(norm=norm, student=v["student"], teachers=v["teachers"], root=v["root"],
                                out=Path(v["out"]), run_name=run_name, steps=v["steps"], batch_size=v["batch_size"],
                                lr=v["lr"], weight_decay=weight_decay, warmup_steps=v["warmup_steps"],
                                teacher_weights=teacher_weights, summary_weight=summary_weight,
                                feature_weight=feature_weight, summary_loss=v["summary_loss"],
                                grad_clip=v["grad_clip"], img_size=v["img_size"], seed=v["seed"], device=v["device"],
                                num_workers=v["workers"], loader_memory=v["loader_memory"],
                                student_views=v["student_views"],
                                shuffle_block=shuffle_block, log_every=v["log_every"], ckpt_every=v["ckpt_every"],
                                ckpt_minutes=ckpt_minutes,
                                num_summary_tokens=v["num_summary_tokens"])
        lease = LeaseOptions(wait=wait, timeout_s=wait_timeout)
    except ValueError as e:
        raise fail(str(e)) from e
    ctx = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun
        ctx = init_from_env(os.environ, device=config.device)
    if extend and not resume:
        raise fail("--extend continues an existing run: give --resume too")
    from stages.distill.train import TrainingInterrupted

    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # torchrun --max-restarts
    if restarts > 0 and not resume and checkpoint_path(config.out_dir).is_file():
        # torchrun restarted the group after a rank died: the same command continues the same run
        resume = True
        if ctx is None or ctx.is_main:
            typer.echo(f"restart {restarts} of the torchrun group: resuming {config.out_dir} from its "
                       "last checkpoint", err=True)
    try:
        run_dir = train(config, resume=resume, extend=extend, dist_ctx=ctx, lease=lease)
    except TrainingInterrupted as e:
        typer.echo(f"interrupted: {e}", err=True)
        raise typer.Exit(130) from e
    except (ValueError, FileNotFoundError, StoreError) as e:  # user mistakes, mismatched stores, no space, ...
        raise fail(str(e)) from e
    if ctx is None or ctx.is_main:
        typer.echo(f"run: {run_dir}")


def register(app: typer.Typer) -> None:
    """Add the distill command to the pipeline app (`pipeline export`: pipeline/cmd_export.py)."""
    app.command("distill")(distill)
