"""The embedded demo corpus: real images shipped inside scikit-image's wheel, exported with no download.

(a) The photographs in skimage's `data` folder (astronaut, coffee, chelsea, hubble_deep_field, ...;
mixed sizes and modes, one TIFF PIL cannot read) are copied byte for byte into <dir>/images/photos/.
(b) scikit-image's `lfw_subset.npy` (100 Labeled Faces in the Wild crops, then 100 non-face crops,
25x25 gray; Huang et al. 2007) becomes PNGs in <dir>/images/lfw/ with <dir>/probe_labels.csv (uri,label)
for the kNN probe, uris as the manifest of the folder SOURCE <dir>/images spells them.
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

from stages.corpus.images import is_image_name
from store_schema import layout

LFW_FILE = "lfw_subset.npy"
LFW_CLASSES = ("face", "nonface")  # first 100 rows are faces, the last 100 are not (skimage docs)
PHOTOS_SUBDIR, LFW_SUBDIR = "photos", "lfw"


@dataclass(frozen=True)
class DemoCorpus:
    """Where the demo corpus went: the folder SOURCE, the probe labels and the file counts."""

    images_dir: Path
    probe_labels: Path
    num_photos: int
    num_lfw: int


def skimage_data_dir() -> Path:
    """Folder of the data files inside the installed scikit-image package."""
    return Path(str(resources.files("skimage.data")))


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
    n_lfw = sum(1 for rel in files if f"/{LFW_SUBDIR}/" in rel)
    n_photos = sum(1 for rel in files if f"/{PHOTOS_SUBDIR}/" in rel)
    return DemoCorpus(layout.demo_images_dir(out_dir), layout.demo_probe_labels_path(out_dir), n_photos, n_lfw)
