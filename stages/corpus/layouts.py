"""Evaluation datasets in their released layouts, read into manifest rows (`pipeline corpus --layout`).

The benchmarks the PHI-S paper ranks students on (arXiv 2410.01680, Table 1; AM-RADIO arXiv 2312.06709)
come in fixed folder layouts. Each parser lists a dataset's images with their split, label and annotation
paths, and the dataset's class list. `dataset_source` turns it into a corpus source whose items carry
their entries, so the dataset is built through the same units as any corpus (stages/corpus/build_runner.py,
in this process or on Ray): each unit decodes its images and `check_annotations` checks each image's
annotations against it, in the worker.

| layout | files | splits | labels / targets |
|---|---|---|---|
| ``imagefolder`` (ImageNet) | ``train/<class>/*``, ``val/<class>/*`` | the two folders | class = folder; names from ``classes.txt`` (label<TAB>name) or ``LOC_synset_mapping.txt`` if present |
| ``ade20k`` (ADEChallengeData2016) | ``images/{training,validation}/*.jpg``, ``annotations/{…}/*.png`` | training → train, validation → val | mask value k+1 = class k, 0 = "other" (ignored); names from ``objectInfo150.csv`` / ``.txt`` |
| ``voc`` (VOC2012) | ``JPEGImages/*.jpg``, ``SegmentationClass/*.png``, ``ImageSets/Segmentation/{train,val}.txt`` | the lists | palette index = class (21, background 0), 255 = boundary (ignored) |
| ``depth`` (NYUv2-style pairs) | ``{train,val}/rgb/*``, ``{train,val}/depth/<stem>.png`` (16-bit), optional ``{train,val}/normals/<stem>.png``, ``depth_meta.json`` | the folders | depth = PNG value × ``depth_scale`` metres (0 = none); normals from the dataset (RGB = (n + 1) · 127.5) or derived from depth with ``intrinsics`` |

Two kinds of bad input. A file that is broken or missing on its own (an image that does not decode, an
image without its mask) is recorded in the manifest with a reason, as for any corpus. A dataset that does
not match its layout (no annotations folder, a mask whose size differs from its image, class ids beyond
the class list, depth without a scale, a depth PNG that is not 16-bit) raises `LayoutError`, one line
naming the file and what was expected: such a dataset is the wrong one, or needs converting first.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stages.corpus.images import is_image_name
from stages.corpus.sources import FILE, CorpusSource, SourceItem
from store_schema.manifest import DatasetInfo

LAYOUTS: tuple[str, ...] = ("files", "imagefolder", "ade20k", "voc", "depth")  # files: a plain corpus
IGNORE_INDEX = 255
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
ADE_SPLITS = {"training": "train", "validation": "val"}
DEPTH_META = "depth_meta.json"
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class LayoutError(ValueError):
    """A dataset that does not match its declared layout (one line: the file and what was expected)."""


@dataclass(frozen=True)
class Entry:
    """One image of a dataset: uri (relative to the dataset folder), split, and its label / annotation uris."""

    uri: str
    split: str
    label: str = ""
    mask_uri: str = ""
    depth_uri: str = ""
    normals_uri: str = ""


@dataclass(frozen=True)
class ParsedDataset:
    base: Path
    entries: list[Entry]
    info: DatasetInfo


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    return layout


def _need_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"{path} is missing: expected {expected}")
    return path


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name))


def parse_dataset(layout: str, source: Path, *, name: str) -> ParsedDataset:
    """The dataset at `source` in `layout` (not "files"): its entries sorted by uri and its DatasetInfo."""
    parsers = {"imagefolder": _imagefolder, "ade20k": _ade20k, "voc": _voc, "depth": _depth}
    source = Path(source)
    if not source.is_dir():
        raise LayoutError(f"dataset folder {source} does not exist (layout {layout})")
    entries, info = parsers[check_layout(layout)](source, name)
    if not entries:
        raise LayoutError(f"{source} holds no images in the {layout} layout")
    entries = sorted(entries, key=lambda e: e.uri)
    dups = sorted({a.uri for a, b in zip(entries, entries[1:]) if a.uri == b.uri})
    if dups:
        raise LayoutError(f"{source / dups[0]} is listed more than once ({len(dups)} such images, e.g. in both "
                          "splits); expected each image in one split")
    return ParsedDataset(source, entries, info)


def dataset_source(dataset: ParsedDataset, text: str) -> CorpusSource:
    """The dataset as a corpus source: one image file per entry, the entry kept beside it. Each item's stamp
    covers its annotation files too, so a resumed build rebuilds the units whose masks or depth changed."""
    def stamp(uri: str) -> str:
        try:
            st = (dataset.base / uri).stat()
        except OSError:
            return ""
        return f"{st.st_size}:{st.st_mtime_ns}"

    items = tuple(SourceItem(e.uri, FILE, "|".join(stamp(u) for u in (e.uri, e.mask_uri, e.depth_uri, e.normals_uri)
                                                   if u)) for e in dataset.entries)
    return CorpusSource(text, dataset.base, items, tuple(dataset.entries))


def _class_names(source: Path, classes: list[str]) -> list[str]:
    """Prompt names of imagefolder classes: classes.txt (label<TAB>name) or LOC_synset_mapping.txt
    (ImageNet: `wnid name, other names`), else the folder names."""
    mapping: dict[str, str] = {}
    if (source / "classes.txt").is_file():
        for line in (source / "classes.txt").read_text(encoding="utf-8").splitlines():
            label, _, name = line.partition("\t")
            if label.strip():
                mapping[label.strip()] = (name or label).strip()
    elif (source / "LOC_synset_mapping.txt").is_file():
        for line in (source / "LOC_synset_mapping.txt").read_text(encoding="utf-8").splitlines():
            wnid, _, names = line.partition(" ")
            mapping[wnid.strip()] = names.split(",")[0].strip() or wnid.strip()
    return [mapping.get(c, c) for c in classes]


def _imagefolder(source: Path, name: str) -> tuple[list[Entry], DatasetInfo]:
    splits = {s: _need_dir(source / s, f"{s}/<class>/<images> (ImageNet style: train/ and val/ class folders)")
              for s in ("train", "val")}
    classes = sorted(p.name for p in splits["train"].iterdir() if p.is_dir())
    if not classes:
        raise LayoutError(f"{splits['train']} has no class folders: expected train/<class>/<images>")
    unknown = sorted(p.name for p in splits["val"].iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise LayoutError(f"{splits['val'] / unknown[0]}: class folder {unknown[0]!r} is not one of the "
                          f"{len(classes)} train classes (val classes must be train classes)")
    entries = [Entry(p.relative_to(source).as_posix(), split, label=p.relative_to(folder).parts[0])
               for split, folder in splits.items() for p in _images(folder) if len(p.relative_to(folder).parts) > 1]
    info = DatasetInfo(layout="imagefolder", name=name, classes=tuple(classes),
                       class_names=tuple(_class_names(source, classes)))
    return entries, info


def _ade_classes(source: Path) -> list[str]:
    """Class names by index from objectInfo150.csv (comma) or objectInfo150.txt (tab): columns Idx ... Name."""
    for fname, delim in (("objectInfo150.csv", ","), ("objectInfo150.txt", "\t")):
        path = source / fname
        if path.is_file():
            rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines(), delimiter=delim))
            if not rows or not {"Idx", "Name"} <= set(rows[0]):
                raise LayoutError(f"{path}: expected columns Idx and Name (ADE20k objectInfo150)")
            by_idx = {int(r["Idx"]): r["Name"].strip() for r in rows}
            if sorted(by_idx) != list(range(1, len(by_idx) + 1)):
                raise LayoutError(f"{path}: Idx must run 1..{len(by_idx)}, found {sorted(by_idx)[:5]}...")
            return [by_idx[i] for i in range(1, len(by_idx) + 1)]
    raise LayoutError(f"{source / 'objectInfo150.csv'} is missing: expected the ADE20k class list "
                      "(objectInfo150.csv or objectInfo150.txt with columns Idx, Name)")


def _ade20k(source: Path, name: str) -> tuple[list[Entry], DatasetInfo]:
    images = _need_dir(source / "images", "images/{training,validation}/*.jpg (ADEChallengeData2016)")
    annotations = _need_dir(source / "annotations", "annotations/{training,validation}/*.png beside images/")
    entries = []
    for folder, split in ADE_SPLITS.items():
        _need_dir(annotations / folder, f"annotations/{folder}/*.png (the masks of images/{folder})")
        for p in _images(_need_dir(images / folder, f"images/{folder}/*.jpg")):
            mask = annotations / folder / p.relative_to(images / folder).with_suffix(".png")
            entries.append(Entry(p.relative_to(source).as_posix(), split,
                                 mask_uri=mask.relative_to(source).as_posix()))
    classes = _ade_classes(source)
    names = [c.split(";")[0].strip() for c in classes]
    return entries, DatasetInfo(layout="ade20k", name=name, classes=tuple(classes), class_names=tuple(names),
                                mask_offset=1)


def _voc(source: Path, name: str) -> tuple[list[Entry], DatasetInfo]:
    jpegs = _need_dir(source / "JPEGImages", "JPEGImages/*.jpg (VOC2012)")
    masks = _need_dir(source / "SegmentationClass", "SegmentationClass/*.png beside JPEGImages/")
    sets = _need_dir(source / "ImageSets" / "Segmentation", "ImageSets/Segmentation/{train,val}.txt")
    entries = []
    for split in ("train", "val"):
        listing = sets / f"{split}.txt"
        if not listing.is_file():
            raise LayoutError(f"{listing} is missing: expected one image id per line (VOC segmentation split)")
        for stem in (ln.strip() for ln in listing.read_text(encoding="utf-8").splitlines()):
            if stem:
                entries.append(Entry((jpegs / f"{stem}.jpg").relative_to(source).as_posix(), split,
                                     mask_uri=(masks / f"{stem}.png").relative_to(source).as_posix()))
    return entries, DatasetInfo(layout="voc", name=name, classes=VOC_CLASSES, class_names=VOC_CLASSES)


def _depth_meta(source: Path) -> tuple[float, dict[str, float] | None]:
    path = source / DEPTH_META
    if not path.is_file():
        raise LayoutError(f"{path} is missing: depth needs a scale, expected {{\"depth_scale\": metres per unit "
                          "of the 16-bit depth PNGs, \"intrinsics\": {\"fx\", \"fy\", \"cx\", \"cy\"} (optional)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        scale = meta["depth_scale"]
    except (ValueError, KeyError, TypeError):
        raise LayoutError(f"{path}: expected a JSON object with \"depth_scale\" (metres per unit of the depth "
                          "PNGs)") from None
    if not isinstance(scale, (int, float)) or scale <= 0:
        raise LayoutError(f"{path}: depth_scale must be a positive number of metres per unit, got {scale!r}")
    intr = meta.get("intrinsics")
    if intr is not None and not (isinstance(intr, dict) and {"fx", "fy", "cx", "cy"} <= set(intr)):
        raise LayoutError(f"{path}: intrinsics must be {{\"fx\", \"fy\", \"cx\", \"cy\"}} in pixels, got {intr!r}")
    return float(scale), (None if intr is None else {k: float(intr[k]) for k in ("fx", "fy", "cx", "cy")})


def _depth(source: Path, name: str) -> tuple[list[Entry], DatasetInfo]:
    scale, intrinsics = _depth_meta(source)
    entries, with_normals = [], []
    for split in ("train", "val"):
        rgb = _need_dir(source / split / "rgb", f"{split}/rgb/<images> with {split}/depth/<stem>.png beside it")
        depth = _need_dir(source / split / "depth", f"{split}/depth/<stem>.png (16-bit) beside {split}/rgb/")
        normals = source / split / "normals"
        with_normals.append(normals.is_dir())
        for p in _images(rgb):
            stem = p.relative_to(rgb).with_suffix(".png")
            entries.append(Entry(p.relative_to(source).as_posix(), split,
                                 depth_uri=(depth / stem).relative_to(source).as_posix(),
                                 normals_uri=(normals / stem).relative_to(source).as_posix() if normals.is_dir() else ""))
    if not all(with_normals) and intrinsics is None:
        raise LayoutError(f"{source / DEPTH_META}: without normals folders ({{train,val}}/normals) the normals are "
                          "derived from depth, which needs \"intrinsics\": {\"fx\", \"fy\", \"cx\", \"cy\"}")
    return entries, DatasetInfo(layout="depth", name=name, depth_scale=scale, intrinsics=intrinsics,
                                normals="dataset" if all(with_normals) else "from depth")


def _open_annotation(path: Path) -> Image.Image | str:
    """The opened annotation, or the reason it cannot be used (recorded in the manifest)."""
    if not path.is_file():
        return f"no annotation: {path.name} is missing"
    try:
        img = Image.open(path)
        img.load()
        return img
    except Exception as e:  # noqa: BLE001 - untrusted bytes: any decoder error is a recorded reason
        return f"annotation {path.name} does not decode: {type(e).__name__}: {e}"


def check_annotations(info: DatasetInfo, base: Path, entry: Entry, size: tuple[int, int]) -> str:
    """"" when the image's annotations fit it, else the reason to record; LayoutError when the dataset does
    not match its layout. size: the image's (width, height)."""
    for column in ("mask_uri", "depth_uri", "normals_uri"):
        uri = getattr(entry, column)
        if not uri:
            continue
        path = base / uri
        img = _open_annotation(path)
        if isinstance(img, str):
            return img
        with img:
            if img.size != size:
                raise LayoutError(f"{path}: size {img.size[0]}x{img.size[1]} differs from its image "
                                  f"{base / entry.uri} ({size[0]}x{size[1]}); expected the same size")
            if column == "mask_uri":
                _check_mask(info, path, img)
            elif column == "depth_uri" and img.mode not in SIXTEEN_BIT_MODES:
                raise LayoutError(f"{path}: mode {img.mode}; expected a 16-bit depth PNG (values x depth_scale "
                                  "= metres, 0 = no depth)")
            elif column == "normals_uri" and img.mode != "RGB":
                raise LayoutError(f"{path}: mode {img.mode}; expected an RGB normals PNG (RGB = (n + 1) * 127.5)")
    return ""


def _check_mask(info: DatasetInfo, path: Path, img: Image.Image) -> None:
    if img.mode not in ("L", "P"):
        raise LayoutError(f"{path}: mode {img.mode}; expected a single-channel (L or palette) PNG of class ids")
    values = np.unique(np.asarray(img)).astype(np.int64)
    bad = values[(values >= info.mask_offset + len(info.classes)) & (values != IGNORE_INDEX)]
    if bad.size:
        top = len(info.classes) - 1 + info.mask_offset
        raise LayoutError(f"{path}: class ids {bad[:5].tolist()} are beyond the {len(info.classes)} classes of the "
                          f"class list; expected values {info.mask_offset}..{top} or {IGNORE_INDEX} (ignored)")


def class_of_mask(info: DatasetInfo, mask_HW: np.ndarray) -> np.ndarray:
    """A mask's values as class ids 0..L-1, ignored pixels 255 (ADE20k's 0 = "other" becomes 255)."""
    if info.mask_offset == 0:
        return mask_HW
    out = mask_HW.astype(np.int64) - info.mask_offset
    out[(out < 0) | (mask_HW == IGNORE_INDEX)] = IGNORE_INDEX
    return out.astype(np.uint8)


def write_class_file(info: DatasetInfo, path: Path) -> Path:
    """The dataset's class list as a class file (label<TAB>prompt name per line, class-id order), written
    when missing or different: what `pipeline extract-text --classes ROOT` and zero-shot evaluation read."""
    if not info.classes:
        raise ValueError(f"dataset {info.name!r} ({info.layout}) has no class list")
    text = "".join(f"{c}\t{n}\n" for c, n in zip(info.classes, info.class_names))
    path = Path(path)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path
