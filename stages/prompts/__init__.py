"""Prompt sets for zero-shot evaluation through a CLIP text tower (Radford et al., arXiv 2103.00020).

A prompt set is a list of class names crossed with prompt templates ("a photo of a {}."). CLIP's
zero-shot recipe embeds every (class, template) sentence with the text tower, L2-normalizes each, averages
over the templates and normalizes again: one text embedding per class. The template sets ship as package
data (``templates/*.txt``, one template per line, ``{}`` marks the class name):

* ``imagenet``: the 80 templates OpenAI used for ImageNet zero-shot classification;
* ``segmentation``: the short scene templates MaskCLIP (Zhou et al., arXiv 2112.01071) uses for dense
  open-vocabulary labelling;
* ``simple``: the single template "a photo of a {}.".

A class file has one class per line; a line ``label<TAB>prompt name`` uses ``prompt name`` in the
sentences and ``label`` to match labels (probe_labels.csv) - otherwise the line is both. Blank lines and
lines starting with ``#`` are skipped. For segmentation, class k is mask value k (0-based line order).

The prompt set's hash (sha256 of its canonical JSON) keys its text embeddings inside a teacher's store,
so a changed class list or template never meets stale embeddings. No torch here: evaluation reads prompt
sets without building a teacher.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

TEMPLATE_SETS: tuple[str, ...] = ("imagenet", "segmentation", "simple")


@dataclass(frozen=True)
class PromptSet:
    """Class labels, the names used in sentences, and the templates; `hash` keys its store group."""

    labels: tuple[str, ...]
    names: tuple[str, ...]
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("a prompt set needs at least one class")
        if len(self.labels) != len(self.names):
            raise ValueError(f"{len(self.labels)} labels but {len(self.names)} names")
        if len(set(self.labels)) != len(self.labels):
            dup = sorted({x for x in self.labels if self.labels.count(x) > 1})
            raise ValueError(f"duplicate class labels: {dup}")
        if not self.templates:
            raise ValueError("a prompt set needs at least one template")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"every template needs exactly one '{{}}' for the class name; bad: {bad[:3]}")

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "names": list(self.names), "templates": list(self.templates)}

    @property
    def hash(self) -> str:
        """sha256 hex of the canonical JSON of labels, names and templates."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def sentences(self, class_index: int) -> list[str]:
        """The template sentences of one class."""
        return [t.format(self.names[class_index]) for t in self.templates]


def read_classes(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(labels, prompt names) from a class file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class file {path} does not exist (one class name per line)")
    labels, names = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        label, _, name = line.partition("\t")
        labels.append(label.strip())
        names.append((name or label).strip())
    if not labels:
        raise ValueError(f"class file {path} lists no classes")
    return tuple(labels), tuple(names)


def load_templates(templates: str | Path) -> tuple[str, ...]:
    """A shipped template set by name (see TEMPLATE_SETS) or a file of templates, one per line."""
    if str(templates) in TEMPLATE_SETS:
        text = resources.files("stages.prompts").joinpath("templates", f"{templates}.txt").read_text("utf-8")
    else:
        path = Path(templates)
        if not path.is_file():
            raise ValueError(f"templates {str(templates)!r} is neither a shipped set ({', '.join(TEMPLATE_SETS)}) "
                             "nor an existing file")
        text = path.read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def prompt_set(classes_file: Path, templates: str | Path) -> PromptSet:
    """The prompt set of a class file and a template set (name or file)."""
    labels, names = read_classes(classes_file)
    return PromptSet(labels, names, load_templates(templates))
