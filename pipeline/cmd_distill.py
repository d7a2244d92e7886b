"""`pipeline distill` and `pipeline export`: thin commands over stages/distill (store-fed agglomerative
distillation, AM-RADIO arXiv 2312.06709, with PHI-S target normalization, arXiv 2410.01680).

`distill` trains a student + per-teacher heads from <root>/<teacher>.zarr into <out>/<run-name>
(config.json, checkpoint.pt, metrics.jsonl, export.safetensors). Launched by torchrun (WORLD_SIZE > 1 in
the environment) it trains data-parallel; --batch-size is then per process. `export` re-writes a run's
export.safetensors (denormalization folded into the heads) from its latest checkpoint.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pipeline.defaults import Derived, ParamsOpt, Route, given_on_command_line, parse_only, routed
from pipeline.errors import command_line, fail

if TYPE_CHECKING:  # stage imports stay lazy (inside the commands): `pipeline --help` must not import torch
    from stages.distill.config import DistillConfig
    from stages.distill.train import TrainingInterrupted

# The NormVariant CLI names, spelled here so the help text needs no torch import (a test keeps them equal).
NORM_NAMES = ("mse", "cosine", "hyb_mse", "hyb_smoothl1", "global_std", "standardize", "pca_w", "zca", "hca",
              "phis", "ada_mse", "ada_phis", "standardize_nf", "pca_w_nf", "zca_nf", "hca_nf")


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

    names = list(dict.fromkeys(t.strip() for v in ([teachers] if isinstance(teachers, str) else teachers or [])
                               for t in v.split(",") if t.strip()))  # repeated options and comma lists
    weights = parse_teacher_weights(str(options.pop("teacher_weights") or ""))
    variant = NormVariant.parse(norm)
    return DistillConfig(student=student, teachers=tuple(names), root=root, out_dir=Path(out) / (run_name or variant.value),
                         norm=variant, teacher_weights=weights, **options)  # type: ignore[arg-type]


# ---- options, grouped as --help shows them (defaults: params.yaml's distill / extract / store keys, else
# DistillConfig's) ----
_RUN, _OPT, _DATA, _CTL = "What to train", "Optimization and loss", "Data and loader", "Checkpoints, resume, sweep"
TeachersOpt = Annotated[Optional[list[str]], typer.Option("--teachers", "--teacher", "-t", rich_help_panel=_RUN, help="Teacher names, comma-separated or the option repeated (--teacher a --teacher b, as `pipeline extract` takes them); each needs <root>/<name>.zarr. Default: extract.teachers.")]
NormOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_RUN, help="Target normalization: " + ", ".join(NORM_NAMES))]
StudentOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_RUN, help="Student: a registered name (vit_tiny_test, vit_b16, vit_l16, vit_h16, eradio_{tiny_test,xt,t,s,b,l}) or timm:<name> for any timm ViT, built from scratch at patch 16.")]
RootOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_RUN, help="Store root holding manifest.parquet and the teacher stores: a folder or an fsspec URL (s3://bucket/prefix). Default: store.root.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", rich_help_panel=_RUN, help="Runs folder; the run goes to <out>/<run-name>.")]
RunNameOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_RUN, help="Run directory name (default: the --norm name).")]
ImgSizeOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_RUN, help="Student input side in pixels.")]
TokensOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_RUN, help="Student summary (CLS) tokens K (default: automatic, one per teacher with a summary; E-RADIO has 1).")]
SeedOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_RUN, help="Seed of initialization and of the sample order. Default: the first of distill.seeds.")]
DeviceOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_RUN, help="Torch device (cpu, cuda, cuda:1); bf16 autocast on CUDA.")]
StepsOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_OPT, help="Optimization steps.")]
BatchOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_OPT, help="Batch per process (global batch = this x processes).")]
LrOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_OPT, help="Peak AdamW learning rate (linear warmup, then cosine).")]
WdOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_OPT, help="AdamW weight decay (not on biases, norms, cls / register tokens, position embeddings).")]
WarmupOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_OPT, help="Linear warmup steps.")]
TeacherWeightsOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_OPT, help="Per-teacher loss weights, e.g. a=1,b=2 (default 1).")]
SummaryWeightOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_OPT, help="Weight of every summary (CLS) loss.")]
FeatureWeightOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_OPT, help="Weight of every dense feature loss.")]
SummaryLossOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_OPT, help="Summary (CLS) loss: cosine (on raw summaries, every variant, as in AM-RADIO / PHI-S) or variant (the --norm's normalization and loss). Default: distill.summary_loss (its first when it lists several).")]
ClipOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_OPT, help="Gradient-norm clip (0: off; a fixed clip binds differently per variant). The clipped share of steps is logged as clip_frac.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", rich_help_panel=_DATA, help="DataLoader worker processes (0: load in the main process).")]
BlockOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_DATA, help="Shards whose samples are shuffled together each epoch (the loader holds about this many).")]
MemoryOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_DATA, help="Memory the loader may hold for decoded store units, all its workers together (8GiB, 512MiB, ...); about one --shuffle-block of units must fit, the error says how much.")]
ViewsOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_DATA, help="Where the student's views come from: auto (the store `pipeline views --size <img-size>` renders, when complete; else decode), store (that store or an error), decode (the image files). Same pixels either way.")]
LogOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_CTL, help="Write metrics.jsonl every this many steps.")]
CkptOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_CTL, help="Also checkpoint every this many steps (0: off).")]
CkptMinOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_CTL, help="Checkpoint whenever this many minutes passed since the last (0: off). Ctrl-C / SIGTERM always checkpoints first.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", rich_help_panel=_CTL, help="Continue the run from its checkpoint.pt (same --steps).")]
ExtendOpt = Annotated[bool, typer.Option("--extend", rich_help_panel=_CTL, help="With --resume and more --steps: continue a run on a schedule recomputed for the new total (recorded in config.json); without it other steps are refused.")]
WaitOpt = Annotated[bool, typer.Option("--wait", rich_help_panel=_CTL, help="If another run is training into the same run directory (it holds the directory's lease), wait for it instead of failing at once.")]
WaitTimeoutOpt = Annotated[Optional[float], typer.Option(rich_help_panel=_CTL, help="With --wait: give up after this many seconds (default: wait as long as it takes).")]
SweepOpt = Annotated[bool, typer.Option("--sweep", rich_help_panel=_CTL, help="Train --norm / --seed as one run of params.yaml's sweep (distill.norms x distill.seeds) into <out>/<norm>-seed<seed> (with --summary-loss, when distill.summary_loss lists several: <out>/<norm>-<loss>-seed<seed>): a finished run with this config is reused, an interrupted one resumed, one that cannot be resumed (other config or steps, changed stores) refused (what `pipeline demo` runs).")]
ReplaceOpt = Annotated[bool, typer.Option("--replace-conflicting", rich_help_panel=_CTL, help="With --sweep: replace a run that cannot be resumed by a new run instead of refusing (dvc.yaml's distill stage: DVC re-ran it because a declared dependency changed, and its cache keeps the old outputs).")]
ReceiptsOpt = Annotated[Optional[Path], typer.Option(rich_help_panel=_CTL, help="Folder of the extract stages' receipts (dvc.yaml: receipts); each teacher's receipt must describe its store as it is now.")]
_RECIPE = "The papers' student recipe (docs/RECIPE.md)"
PartitionOpt = Annotated[Optional[list[str]], typer.Option("--partition", rich_help_panel=_RECIPE, help="A resolution partition SIZE:BATCH:STORES, repeatable (e.g. --partition 64:16:tiny_dinov2,tiny_clip,tiny_sam --partition 128:4:tiny_sam@256): every step trains one batch of each at its student side against its stores (<teacher>@<side>: a store extracted at another side); losses summed. Replaces --img-size / --batch-size / --teachers. Default: distill.partitions.")]
StudentWeightsOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_RECIPE, help="Student initialization: random, pretrained (timm's weights for the student from the Hugging Face hub cache; never downloaded) or a weights file (its sha256 is recorded).")]
CpeOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_RECIPE, help="ViT students: AM-RADIO's cropped position embeddings, a table of this many tokens per side (0: off; the paper: 128).")]
WindowOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_RECIPE, help="ViT students: windowed attention in training, tokens per window side (0: off).")]
WindowEveryOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_RECIPE, help="With --window-size: every N-th block (and the last) attends globally.")]
WindowMinOpt = Annotated[Optional[int], typer.Option(rich_help_panel=_RECIPE, help="With --window-size: only partitions of at least this side train windowed.")]
CheckpointingOpt = Annotated[bool, typer.Option("--grad-checkpointing", rich_help_panel=_RECIPE, help="Recompute the student's block activations in the backward pass (~10x less activation memory, about one more forward of compute).")]
CompileOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_RECIPE, help="Train under torch.compile with this backend: inductor or aot_eager (eager: no compile).")]
TeacherBatchesOpt = Annotated[Optional[str], typer.Option(rich_help_panel=_RECIPE, help="shared (every teacher's loss on every image of its partition) or split (PHI-S: each teacher its own rows of the batch).")]
DISTILL = Route(sections=("distill",), keys={"teachers": "extract.teachers", "root": "store.root",
                                             "seed": Derived("distill.seeds", lambda p: p.distill.seeds[0]),
                                             "summary_loss": Derived("distill.summary_loss",  # a list: its first
                                                                     lambda p: p.summary_losses[0])},
                config="stages.distill.config:DistillConfig", required=("teachers", "root"),
                unless={"teachers": "partitions"})


def distill(
    ctx: typer.Context,
    teachers: TeachersOpt = None, norm: NormOpt = None, student: StudentOpt = None, root: RootOpt = None,
    runs_dir: OutOpt = None, run_name: RunNameOpt = None, img_size: ImgSizeOpt = None,
    num_summary_tokens: TokensOpt = None, seed: SeedOpt = None, device: DeviceOpt = None,
    steps: StepsOpt = None, batch_size: BatchOpt = None, lr: LrOpt = None, weight_decay: WdOpt = None,
    warmup_steps: WarmupOpt = None, teacher_weights: TeacherWeightsOpt = None, summary_weight: SummaryWeightOpt = None,
    feature_weight: FeatureWeightOpt = None, summary_loss: SummaryLossOpt = None, grad_clip: ClipOpt = None,
    num_workers: WorkersOpt = None, shuffle_block: BlockOpt = None, loader_memory: MemoryOpt = None,
    student_views: ViewsOpt = None, log_every: LogOpt = None, ckpt_every: CkptOpt = None,
    ckpt_minutes: CkptMinOpt = None, resume: ResumeOpt = False, extend: ExtendOpt = False, wait: WaitOpt = False,
    wait_timeout: WaitTimeoutOpt = None, sweep: SweepOpt = False, replace_conflicting: ReplaceOpt = False,
    receipts: ReceiptsOpt = None, partitions: PartitionOpt = None, student_weights: StudentWeightsOpt = None,
    cpe_grid: CpeOpt = None, window_size: WindowOpt = None, window_global_every: WindowEveryOpt = None,
    window_min_size: WindowMinOpt = None, grad_checkpointing: CheckpointingOpt = False,
    torch_compile: CompileOpt = None, teacher_batches: TeacherBatchesOpt = None, params: ParamsOpt = None,
) -> None:
    """Train a student and per-teacher heads from the feature store (never runs a teacher).

    Flags not given take their values from params.yaml when there is one (printed on stderr)."""
    from stages.distill.ddp import init_from_env
    from stages.distill.run_dir import checkpoint_path
    from stages.distill.train import TrainingInterrupted, train
    from stages.devices import check_device
    from store_schema.lease import LeaseOptions

    config = run_config(ctx)
    check_device(config.device)  # before the run directory exists
    if receipts is not None:
        from stages.extract.receipt import check_receipts

        check_receipts(receipts, config.root, config.teachers)
    if sweep:
        from stages.distill.sweep import train_variant

        try:
            done = train_variant(config, replace_conflicting=replace_conflicting, say=typer.echo)
        except TrainingInterrupted as e:
            raise _interrupted(e, command_line()) from e
        typer.echo(f"run: {config.out_dir} ({done})")
        return
    dist = init_from_env(os.environ, device=config.device) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    if extend and not resume:
        raise fail("--extend continues an existing run: give --resume too")
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # torchrun --max-restarts
    if restarts > 0 and not resume and checkpoint_path(config.out_dir).is_file():
        # torchrun restarted the group after a rank died: the same command continues the same run
        resume = True
        if dist is None or dist.is_main:
            typer.echo(f"restart {restarts} of the torchrun group: resuming {config.out_dir} from its "
                       "last checkpoint", err=True)
    try:
        run_dir = train(config, resume=resume, extend=extend, dist_ctx=dist,
                        lease=LeaseOptions(wait=wait, timeout_s=wait_timeout))
    except TrainingInterrupted as e:
        raise _interrupted(e, command_line() + ("" if resume else " --resume")) from e
    if dist is None or dist.is_main:
        typer.echo(f"run: {run_dir}")


def _interrupted(e: "TrainingInterrupted", resumes: str) -> typer.Exit:
    """Print what an interrupted run kept and the command that resumes it; the Exit (128 + signal) to raise."""
    from stages.distill.run_dir import checkpoint_path

    typer.echo(f"Interrupted ({signal.Signals(e.signum).name}) at step {e.step} of {e.steps}: steps 1-{e.step} are "
               f"finished and kept in {checkpoint_path(e.run_dir)}, steps {e.step + 1}-{e.steps} are not.\n"
               f"  resume: {resumes}   (continues from step {e.step} as an uninterrupted run would)", err=True)
    return typer.Exit(128 + e.signum)


# options passed to DistillConfig as they are (the others are resolved above or are not the config's)
_CONFIG_OPTIONS = ("img_size", "num_summary_tokens", "seed", "device", "steps", "batch_size", "lr",
                   "weight_decay", "warmup_steps", "summary_weight", "feature_weight", "summary_loss", "grad_clip",
                   "num_workers", "shuffle_block", "loader_memory", "student_views", "log_every", "ckpt_every",
                   "ckpt_minutes", "student_weights", "cpe_grid", "window_size", "window_global_every",
                   "window_min_size", "grad_checkpointing", "torch_compile", "teacher_batches")


def run_config(ctx: typer.Context) -> "DistillConfig":
    """The DistillConfig of `pipeline distill`'s resolved options (a --sweep run: <out>/<norm>-seed<seed>)."""
    o = ctx.params
    run_name = o["run_name"]
    if o["sweep"]:
        run_name = sweep_run_name(ctx, norm=o["norm"], seed=o["seed"], summary_loss=o["summary_loss"],
                                  resume=o["resume"] or o["extend"], run_name=run_name)
    elif o["replace_conflicting"]:
        raise ValueError("--replace-conflicting applies to a --sweep run")
    teachers = o["teachers"]
    if o["partitions"] and not given_on_command_line(ctx, "teachers"):
        teachers = []  # the partitions name the stores (extract.teachers does not list <teacher>@<side> ones)
    return resolve_config(norm=o["norm"], student=o["student"], teachers=teachers, root=o["root"],
                          out=o["runs_dir"], run_name=run_name, teacher_weights=o["teacher_weights"],
                          partitions=tuple(o["partitions"] or ()),
                          **{k: v for k, v in o.items() if k in _CONFIG_OPTIONS})


def resolve_distill(args: list[str]) -> "DistillConfig":
    """The DistillConfig `pipeline distill ARGS` would train (nothing is run)."""
    app = typer.Typer()
    register(app)
    return run_config(parse_only(app, "distill", args))


def sweep_run_name(ctx: typer.Context, *, norm: str, seed: int, summary_loss: str, resume: bool,
                   run_name: str | None) -> str:
    """<norm>-seed<seed> (<norm>-<summary loss>-seed<seed> when distill.summary_loss lists several), after
    checking that the run is one of the params file's sweep."""
    from pipeline.defaults import given_on_command_line, params_of

    if resume or run_name is not None:
        raise ValueError("--sweep decides itself whether to resume and names the run <norm>-seed<seed>: leave out "
                         "--resume / --extend / --run-name")
    p = params_of(ctx)
    d = p.distill
    if norm not in d.norms:
        raise ValueError(f"--norm {norm!r} is not in distill.norms {d.norms}")
    if seed not in d.seeds:
        raise ValueError(f"--seed {seed} is not in distill.seeds {d.seeds}")
    if summary_loss not in p.summary_losses:
        raise ValueError(f"--summary-loss {summary_loss!r} is not in distill.summary_loss {p.summary_losses}")
    if len(p.summary_losses) > 1 and not given_on_command_line(ctx, "summary_loss"):
        raise ValueError(f"distill.summary_loss lists {p.summary_losses}: give --summary-loss (one of them) with "
                         "--sweep; dvc.yaml's matrix (and so `pipeline demo`) sweeps one summary loss per "
                         "experiment (docs/SWEEP.md, 'The summary loss as a sweep axis')")
    return p.run_dir(norm, seed, summary_loss).name


def register(app: typer.Typer) -> None:
    """Add the distill command to the pipeline app (`pipeline export`: pipeline/cmd_export.py)."""
    app.command("distill", cls=routed(DISTILL))(distill)
