"""Store layout, schema v2: the only place store paths and array layouts are spelled.

Implements the layout of docs/ARCHITECTURE.md ("Store layout"), the offline feature store of
agglomerative distillation (AM-RADIO, arXiv 2312.06709; PHI-S, arXiv 2410.01680). Everything else asks
this module for a path or an array name instead of joining strings itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from store_schema import location
from store_schema.location import Location

SCHEMA_VERSION = 2  # v2: features as bf16 bit patterns (uint16), bounded per-split statistics
TOKEN_KINDS: tuple[str, ...] = ("summary", "patches")

# Arrays inside <teacher>.zarr (paths relative to the store root group).
SUMMARY = "summary"
PATCHES = "patches"
VALID = "valid"
SHARDS_COMPLETE = "shards/complete"
IMAGE_SPLIT = "image_split"  # uint8 [N]: index into STATS_SPLITS of each image (from the manifest)
STATS_FIELDS: tuple[str, ...] = ("count", "mean", "m2", "sketch")  # sketch: shard level only
STATS_LEVELS: tuple[str, ...] = ("shard", "total")  # per-shard partials (until folded), folded totals
STATS_SPLITS: tuple[str, ...] = ("train", "val")  # the manifest's splits, in the order merged for "all"
STATS_FOLDED = "stats/folded"  # int64 [2]: (shards folded into the totals, live total slot)

DIMS_SUMMARY = ("image", "view", "channel")
DIMS_PATCHES = ("image", "view", "y", "x", "channel")
DIMS_VALID = ("image", "view")
# float64 [N, V, 4]: each view's teacher frame (u0, v0, u1, v1) in view coordinates, for teachers whose
# resize rule is not a squash (stages/teachers/resize.py); written once when the store is created
FRAMES = "frames"
DIMS_FRAMES = ("image", "view", "frame")

# Root attributes every store carries.
REQUIRED_ATTRS: tuple[str, ...] = (
    "schema_version", "code_version", "teacher", "weights", "manifest_hash", "view_spec", "codec",
    "storage_grid", "shard_size", "num_images", "num_views", "stats_fold_every",
)

# Root attribute of a store whose extraction ran out of device memory: [{"shard", "from", "to", "worker"}],
# each a shard redone whole at the halved batch size (stages/extract/driver.py).
BATCH_BACKOFFS_ATTR = "batch_backoffs"

# Root attribute of a store made by `pipeline store transcode`: {"store": source path, "fingerprint": ...}.
TRANSCODED_FROM_ATTR = "transcoded_from"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _check_name(what: str, name: str) -> str:
    if not _NAME_RE.match(name) or name.endswith(".zarr"):
        raise ValueError(f"{what} {name!r} is not a valid path component (letters, digits, _ . -)")
    return name


# A store key names one teacher store: the teacher's name for its store at the teacher's own resolution
# (the path every store had before several resolutions existed), "<teacher>@<side>" for a store extracted
# at another input side (AM-RADIO / RADIOv2.5 train a teacher at two resolutions, each its own store with
# its own statistics and normalizers, sharing the manifest's views).
RESOLUTION_SEP = "@"


def store_key(teacher: str, resolution: int | None = None) -> str:
    """"<teacher>" (resolution None: the teacher's own) or "<teacher>@<resolution>"."""
    _check_name("teacher name", teacher)
    if resolution is None:
        return teacher
    if int(resolution) != resolution or resolution < 1:
        raise ValueError(f"a store's resolution must be a positive integer, got {resolution!r}")
    return f"{teacher}{RESOLUTION_SEP}{int(resolution)}"


def split_store_key(key: str) -> tuple[str, int | None]:
    """Inverse of `store_key`: (teacher, resolution or None); ValueError for a malformed key."""
    teacher, sep, res = key.partition(RESOLUTION_SEP)
    if sep and not (res.isdigit() and int(res) > 0 and not res.startswith("0")):
        raise ValueError(f"store {key!r}: after {RESOLUTION_SEP!r} comes the input side in pixels, e.g. tiny_sam@256")
    _check_name("teacher name", teacher)
    return teacher, (int(res) if sep else None)


def _check_key(key: str) -> str:
    split_store_key(key)
    return key


# Inside <teacher>.zarr: the group's metadata, and the object written last when the group was created
# (object stores have no atomic rename, so a store without it is a creation that was interrupted).
ZARR_JSON = "zarr.json"
CREATED_MARKER = ".created"


def manifest_path(root: Location) -> Location:
    """<root>/manifest.parquet (root: a folder or an fsspec URL such as s3://bucket/prefix)"""
    return location.join(root, "manifest.parquet")


# The resumable corpus build (stages/corpus/build_runner.py): one Parquet part per input shard or batch of
# files, named by the sha256 of its inputs and options, kept for the next build of the same inputs.
CORPUS_PARTS_DIR = "corpus_parts"


def corpus_parts_dir(root: Location) -> Location:
    """<root>/corpus_parts: the finished parts of `pipeline corpus` builds into this root."""
    return location.join(root, CORPUS_PARTS_DIR)


def corpus_part_path(root: Location, key: str) -> Location:
    """<root>/corpus_parts/<key>.parquet (key: hex digest of the part's inputs and options)."""
    if not key or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"a corpus part key is a hex digest, got {key!r}")
    return location.join(corpus_parts_dir(root), f"{key}.parquet")


def teacher_store_path(root: Location, teacher: str) -> Location:
    """<root>/<teacher>.zarr, or <root>/<teacher>@<side>.zarr for a store key of another resolution"""
    return location.join(root, f"{_check_key(teacher)}.zarr")


def store_file(store: Location, name: str) -> Location:
    """A file directly inside a store folder: ZARR_JSON or CREATED_MARKER."""
    assert name in (ZARR_JSON, CREATED_MARKER), name
    return location.join(store, name)


def list_teacher_stores(root: Location) -> list[str]:
    """Store keys with a store under root (<root>/<key>.zarr holding a zarr.json), sorted."""
    names = [n for n in location.list_dir(root) if n.endswith(".zarr")]
    return sorted(n[: -len(".zarr")] for n in names
                  if location.is_file(store_file(location.join(root, n), ZARR_JSON)))


# Student views rendered once (store_schema/view_store.py): <root>/student_views/<size>px.zarr holding
# VIEWS, VALID (per image: its views rendered) and SHARDS_COMPLETE, keyed by the student's input side.
STUDENT_VIEWS_DIR = "student_views"
VIEWS = "views"
DIMS_VIEWS = ("image", "view", "y", "x", "rgb")
VIEW_STORE_KIND = "student_views"
VIEW_STORE_ATTRS: tuple[str, ...] = (
    "schema_version", "code_version", "kind", "manifest_hash", "view_spec", "size", "shard_size",
    "num_images", "num_views", "render",
)


def student_views_path(root: Location, size: int) -> Location:
    """<root>/student_views/<size>px.zarr: the manifest's views rendered at size x size for the student."""
    if int(size) != size or size < 1:
        raise ValueError(f"student view size must be a positive integer, got {size!r}")
    return location.join(root, STUDENT_VIEWS_DIR, f"{int(size)}px.zarr")


def list_student_view_sizes(root: Location) -> list[int]:
    """Sizes with a student-view store under root (<root>/student_views/<size>px.zarr holding zarr.json)."""
    folder = location.join(root, STUDENT_VIEWS_DIR)
    if not location.exists(folder):
        return []
    sizes = []
    for n in location.list_dir(folder):
        stem = n[: -len("px.zarr")] if n.endswith("px.zarr") else ""
        if stem.isdigit() and location.is_file(store_file(location.join(folder, n), ZARR_JSON)):
            sizes.append(int(stem))
    return sorted(sizes)


def normalizer_path(root: Path, teacher: str, kind: str, variant: str, stats_hash: str) -> Path:
    """<root>/normalizers/<teacher>/<kind>/<variant>-<stats hash, 16 hex>.safetensors

    Keyed by the statistics it was fitted from, so a rebuilt store never meets a stale fit and runs
    trained on the old store keep theirs."""
    check_kind(kind)
    if len(stats_hash) < 16 or any(c not in "0123456789abcdef" for c in stats_hash):
        raise ValueError(f"stats_hash must be a hex sha256, got {stats_hash!r}")
    return location.join(root, "normalizers", _check_key(teacher), kind,
                         f"{_check_name('variant', variant)}-{stats_hash[:16]}.safetensors")


def fidelity_path(root: Path, teacher: str) -> Path:
    """<root>/fidelity/<teacher>.json: the measured storage-fidelity check of one teacher's store."""
    return Path(root) / "fidelity" / f"{_check_key(teacher)}.json"


def lease_path(target: Location) -> Location:
    """<target>.lease: the lease file guarding a store, a run directory or a transcode destination
    (store_schema/lease.py). Beside the target, never inside it, so it exists before the target does. On an
    s3:// root it is an object (store_schema/lease_object.py: S3 conditional writes)."""
    if location.is_url(target):
        return str(target).rstrip("/") + ".lease"
    target = Path(target)
    return target.with_name(target.name + ".lease")


def hadamard_cache_dir(root: Path) -> Path:
    """<root>/hadamard"""
    return location.join(root, "hadamard")


def check_kind(kind: str) -> str:
    """Validate a token kind; unknown kinds raise ValueError listing the valid ones."""
    if kind not in TOKEN_KINDS:
        raise ValueError(f"unknown token kind {kind!r}; valid kinds: {', '.join(TOKEN_KINDS)}")
    return kind


def stats_array(kind: str, field: str, level: str = "shard") -> str:
    """Path of one statistics array inside a store: stats/<kind>/<level>/<field>.

    level "shard": per-shard partials [n_shards, split, ...] (mean / m2 cleared once folded; count and
    sketch = (sum of the mean, trace of M2), which verification checks, kept); level "total": two slots [2, split, ...] of the fold of shards 0..F-1 (see STATS_FOLDED)."""
    check_kind(kind)
    if field not in STATS_FIELDS:
        raise ValueError(f"unknown stats field {field!r}; valid fields: {', '.join(STATS_FIELDS)}")
    if level not in STATS_LEVELS:
        raise ValueError(f"unknown stats level {level!r}; valid levels: {', '.join(STATS_LEVELS)}")
    return f"stats/{kind}/{level}/{field}"


def check_split(split: str | None) -> str | None:
    """Validate a statistics split: None (all images), "train" or "val"."""
    if split is not None and split not in STATS_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: None (all), {', '.join(STATS_SPLITS)}")
    return split


def token_array(kind: str) -> str:
    """Array holding the tokens of one kind ("summary" -> summary, "patches" -> patches)."""
    return {"summary": SUMMARY, "patches": PATCHES}[check_kind(kind)]


# Text side of CLIP-family teachers, inside <teacher>.zarr (store_schema/text_store.py): one group per
# prompt set, keyed by the first 16 hex digits of the prompt set's sha256, and the image-side projection.
TEXT_GROUP = "text"
TEXT_EMBEDDINGS = "embeddings"  # float32 (class, channel) [L, Cs], L2-normalized rows
PROJECTION_GROUP = "projection"
PROJECTION_ARRAYS: tuple[str, ...] = ("ln_post_weight", "ln_post_bias", "proj")  # [Cp], [Cp], [Cp, Cs]


def text_group(prompt_hash: str) -> str:
    """Group of one prompt set's text embeddings inside a teacher store: text/<hash, 16 hex>."""
    if len(prompt_hash) < 16 or any(c not in "0123456789abcdef" for c in prompt_hash):
        raise ValueError(f"prompt_hash must be a hex sha256, got {prompt_hash!r}")
    return f"{TEXT_GROUP}/{prompt_hash[:16]}"


# Demo corpus layout (stages/corpus/demo.py), under the demo directory given on the command line.
def demo_images_dir(demo_dir: Path) -> Path:
    """<demo>/images: the folder SOURCE of the demo corpus."""
    return Path(demo_dir) / "images"


def demo_probe_labels_path(demo_dir: Path) -> Path:
    """<demo>/probe_labels.csv: columns uri,label (uri relative to demo_images_dir)."""
    return Path(demo_dir) / "probe_labels.csv"


def demo_zeroshot_classes_path(demo_dir: Path) -> Path:
    """<demo>/zeroshot_classes.txt: class names of the probe labels, for zero-shot classification."""
    return Path(demo_dir) / "zeroshot_classes.txt"


def demo_bench_dir(demo_dir: Path) -> Path:
    """<demo>/bench: the demo's evaluation datasets in released layouts, one folder each."""
    return Path(demo_dir) / "bench"


def demo_seg_masks_dir(demo_dir: Path) -> Path:
    """<demo>/seg_masks: PNG label masks named like the segmentation images (uri stem + .png)."""
    return Path(demo_dir) / "seg_masks"


def demo_seg_classes_path(demo_dir: Path) -> Path:
    """<demo>/seg_classes.txt: one class per line, line k = mask value k."""
    return Path(demo_dir) / "seg_classes.txt"


# Evaluation at the papers' scale (docs/EVALUATION.md). A dataset root is a store root built with
# `pipeline corpus SRC --out ROOT --layout ...`: its manifest, its teachers' stores (`pipeline extract
# --root ROOT`), and under <root>/bench/ what evaluation derives from the dataset once (training targets at
# a fixed side, the class file for `pipeline extract-text`, teacher reference scores). A run's student
# features over a dataset live in the run (stages/distill/run_dir.py: <run>/eval/cache/<dataset>.zarr).
BENCH_DIR = "bench"
EVAL_CACHE_KIND = "eval_feature_cache"
BENCH_TARGETS_KIND = "bench_targets"


def bench_dir(root: Location) -> Location:
    """<root>/bench: what evaluation derives once from a dataset root."""
    return location.join(root, BENCH_DIR)


def bench_targets_path(root: Location, side: int) -> Location:
    """<root>/bench/targets_<side>px.zarr: training targets (masks, depth, normals) resized to side x side."""
    return location.join(root, BENCH_DIR, f"targets_{int(side)}px.zarr")


def bench_references_path(root: Location) -> Location:
    """<root>/bench/references.json: teacher reference scores, keyed by teacher store and probe settings."""
    return location.join(root, BENCH_DIR, "references.json")


def dataset_classes_path(root: Location) -> Location:
    """<root>/bench/classes.txt: the dataset's class list as a class file (label<TAB>prompt name)."""
    return location.join(root, BENCH_DIR, "classes.txt")

