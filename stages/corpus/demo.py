"""The embedded demo corpus: real images shipped inside scikit-image's wheel, exported with no download.

(a) The photographs in skimage's `data` folder (astronaut, coffee, chelsea, hubble_deep_field, ...;
mixed sizes and modes, one TIFF PIL cannot read) are copied byte for byte into <dir>/images/photos/.
(b) scikit-image's `lfw_subset.npy` (100 Labeled Faces in the Wild crops, then 100 non-face crops,
25x25 gray; Huang et al. 2007) becomes PNGs in <dir>/images/lfw/ with <dir>/probe_labels.csv (uri,label)
for the kNN probe, uris as the manifest of the folder SOURCE <dir>/images spells them.
(c) A segmentation set with exact labels, drawn by scikit-image's ``skimage.draw.random_shapes``: SHAPES_COUNT
64x64 RGB images in <dir>/images/shapes/ with 1-3 shapes each, and their PNG label masks (same names)
in <dir>/seg_masks/shapes/; class = shape kind, background its own class (seg_classes.txt, line k =
mask value k). Each shape is drawn alone on a white canvas (its pixels are exactly the non-white ones)
and pasted in order, the label map updated with it, so masks are exact by construction.
(d) zeroshot_classes.txt: the probe labels (face, nonface) as classes for zero-shot classification.
(e) <dir>/bench/: small evaluation datasets in released layouts (imagefolder, ade20k, depth), exact by
construction (stages/corpus/demo_bench.py).
Only files present on disk are used, and the output is byte-identical on every run.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from stages.corpus.demo_content import (LFW_CLASSES, SHAPE_CLASSES, SHAPES_SIDE,  # noqa: F401 - re-exported
                                       ZEROSHOT_CLASS_LINES, shape_layers, shapes_image)
from stages.corpus.images import is_image_name
from store_schema import layout

LFW_FILE = "lfw_subset.npy"
PHOTOS_SUBDIR, LFW_SUBDIR, SHAPES_SUBDIR = "photos", "lfw", "shapes"
SHAPES_COUNT, SHAPES_SEED = 48, 0


@dataclass(frozen=True)
class DemoCorpus:
    """Where the demo corpus went: the folder SOURCE, the probe labels and the file counts."""

    images_dir: Path
    probe_labels: Path
    num_photos: int
    num_lfw: int
    num_shapes: int = 0
    seg_masks: Path | None = None
    seg_classes: Path | None = None
    zeroshot_classes: Path | None = None
    bench_dir: Path | None = None  # evaluation datasets in released layouts (stages/corpus/demo_bench.py)


def skimage_data_dir() -> Path:
    """Folder of the data files inside the installed scikit-image package."""
    return Path(str(resources.files("skimage.data")))


def _png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, "PNG")
    return buf.getvalue()


def _shapes_files(images: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    masks = layout.demo_seg_masks_dir(Path("."))
    for i in range(SHAPES_COUNT):
        image_SS3, mask_SS = shapes_image(SHAPES_SEED + i)
        out[(images / SHAPES_SUBDIR / f"shapes_{i:03d}.png").as_posix()] = _png(image_SS3, "RGB")
        out[(masks / SHAPES_SUBDIR / f"shapes_{i:03d}.png").as_posix()] = _png(mask_SS, "L")
    out[layout.demo_seg_classes_path(Path(".")).as_posix()] = ("\n".join(SHAPE_CLASSES) + "\n").encode()
    out[layout.demo_zeroshot_classes_path(Path(".")).as_posix()] = ("\n".join(ZEROSHOT_CLASS_LINES) + "\n").encode()
    return out


def _planned_files(data_dir: Path) -> dict[str, bytes]:
    """Relative path under <dir> -> bytes, for every file the demo writes."""
    out: dict[str, bytes] = {}
    images = layout.demo_images_dir(Path("."))
    for src in sorted(p for p in data_dir.iterdir() if p.is_file() and is_image_name(p.name)):
        out[(images / PHOTOS_SUBDIR / src.name).as_posix()] = src.read_bytes()
    lfw_path = data_dir / LFW_FILE
    if not lfw_path.is_file():
        raise FileNotFoundError(f"{lfw_path} is missing from the installed scikit-image; reinstall it")
    faces_N25x25 = np.load(lfw_path)
    assert faces_N25x25.shape[0] % len(LFW_CLASSES) == 0, faces_N25x25.shape
    per_class = faces_N25x25.shape[0] // len(LFW_CLASSES)
    rows = []
    for i, face in enumerate(faces_N25x25):
        label = LFW_CLASSES[i // per_class]
        rel_uri = f"{LFW_SUBDIR}/{label}_{i % per_class:03d}.png"
        buf = io.BytesIO()
        Image.fromarray(np.round(np.clip(face, 0.0, 1.0) * 255).astype(np.uint8), mode="L").save(buf, "PNG")
        out[(images / rel_uri).as_posix()] = buf.getvalue()
        rows.append((rel_uri, label))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["uri", "label"])
    writer.writerows(rows)
    out[layout.demo_probe_labels_path(Path(".")).as_posix()] = text.getvalue().encode()
    out.update(_shapes_files(images))
    from stages.corpus.demo_bench import bench_files

    bench = layout.demo_bench_dir(Path("."))
    out.update({(bench / rel).as_posix(): data for rel, data in bench_files(faces_N25x25).items()})
    return out


def export_demo_corpus(out_dir: Path) -> DemoCorpus:
    """Write the demo corpus under out_dir (new, empty, or a previous demo export: files are rewritten).

    Refuses a folder holding anything else, so the folder SOURCE <out_dir>/images stays exactly the demo.
    """
    out_dir = Path(out_dir)
    files = _planned_files(skimage_data_dir())
    if out_dir.exists():
        existing = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
        foreign = sorted(existing - set(files))
        if foreign:
            raise ValueError(f"{out_dir} holds files that are not part of the demo corpus (e.g. {foreign[:3]}); "
                             "choose a new or empty folder")
    for rel, data in files.items():
        dst = out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
    images = layout.demo_images_dir(Path(".")).as_posix()
    n_lfw = sum(1 for rel in files if rel.startswith(f"{images}/{LFW_SUBDIR}/"))
    n_photos = sum(1 for rel in files if rel.startswith(f"{images}/{PHOTOS_SUBDIR}/"))
    n_shapes = sum(1 for rel in files if rel.startswith(f"{images}/{SHAPES_SUBDIR}/"))
    return DemoCorpus(layout.demo_images_dir(out_dir), layout.demo_probe_labels_path(out_dir), n_photos, n_lfw,
                      n_shapes, layout.demo_seg_masks_dir(out_dir), layout.demo_seg_classes_path(out_dir),
                      layout.demo_zeroshot_classes_path(out_dir), layout.demo_bench_dir(out_dir))
