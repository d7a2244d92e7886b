"""Resolution partitions of a stage-two run (AM-RADIO arXiv 2312.06709 §3; RADIOv2.5 arXiv 2412.07679).

AM-RADIO trains one student step on several *partitions* at once: half its GPUs see CLIP + DINOv2 targets
at 432 px (batch 32 each), the other half SAM's at 1024 px (batch 2 each), and DDP averages the gradients
over all of them. RADIOv2.5 matches every teacher at a low and a high resolution the same way, which
removes the "mode switching" of a student trained on one resolution per teacher.

Here a run declares partitions: each an input side for the student, a batch size (per rank), and the
teacher stores it is trained against, by store key (`tiny_sam` is the teacher's store at its own
resolution, `tiny_sam@256` the store extracted at 256 px; store_schema/layout.py). Every step draws one
batch per partition from the student views pre-rendered at that side and sums the partitions' losses
(one backward; under DDP the gradients of the summed loss are averaged over the ranks). A store belongs to
one partition: its heads, normalizer and loss terms are its own.

Written in params.yaml (`distill.partitions`), on the command line (`--partition 64:16:tiny_dinov2,
tiny_clip,tiny_sam`, repeated) and recorded in config.json under "partitions". A run without partitions
has one, (img_size, batch_size, teachers): today's single-resolution run, computed exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Partition:
    """One resolution partition: student input side, batch size per rank, the store keys it trains on."""

    img_size: int
    batch_size: int
    teachers: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "teachers", tuple(self.teachers))
        if int(self.img_size) != self.img_size or self.img_size < 1 or self.batch_size < 1:
            raise ValueError(f"a partition needs img_size >= 1 and batch_size >= 1, got {self.img_size}, "
                             f"{self.batch_size}")
        if not self.teachers or len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"a partition needs one or more distinct teacher stores, got {list(self.teachers)}")

    def to_dict(self) -> dict[str, Any]:
        return {"img_size": int(self.img_size), "batch_size": int(self.batch_size), "teachers": list(self.teachers)}

    @classmethod
    def coerce(cls, value: "Partition | dict[str, Any] | str") -> "Partition":
        """A Partition from itself, its dict form (config.json, params.yaml) or its text form (the CLI)."""
        if isinstance(value, Partition):
            return value
        if isinstance(value, str):
            return parse_partition(value)
        if not isinstance(value, dict) or set(value) != {"img_size", "batch_size", "teachers"}:
            raise ValueError(f"a partition is a mapping with keys img_size, batch_size, teachers; got {value!r}")
        teachers = value["teachers"]
        if isinstance(teachers, str):
            teachers = [t.strip() for t in teachers.split(",") if t.strip()]
        return cls(int(value["img_size"]), int(value["batch_size"]), tuple(teachers))


def parse_partition(text: str) -> Partition:
    """"SIZE:BATCH:store,store,..." -> Partition; ValueError showing the expected form otherwise."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0].strip().isdigit() or not parts[1].strip().isdigit():
        raise ValueError(f"--partition {text!r} is not SIZE:BATCH:STORES (e.g. 64:16:tiny_dinov2,tiny_clip,tiny_sam "
                         "or 128:4:tiny_sam@256)")
    teachers = tuple(t.strip() for t in parts[2].split(",") if t.strip())
    return Partition(int(parts[0]), int(parts[1]), teachers)


def resolve_partitions(partitions: tuple, *, img_size: int, batch_size: int,
                       teachers: tuple[str, ...]) -> tuple[tuple[Partition, ...], tuple[str, ...]]:
    """(the run's partitions, its store keys in order). Without partitions: one, (img_size, batch_size,
    teachers). With partitions: `teachers`, when given, must name the same stores as the partitions."""
    parts = tuple(Partition.coerce(p) for p in partitions)
    if not parts:
        if not teachers:
            raise ValueError("at least one teacher is required")
        if len(set(teachers)) != len(teachers):
            raise ValueError(f"teachers listed twice: {list(teachers)}")
        return (Partition(img_size, batch_size, tuple(teachers)),), tuple(teachers)
    keys = [t for p in parts for t in p.teachers]
    twice = sorted({t for t in keys if keys.count(t) > 1})
    if twice:
        raise ValueError(f"stores {twice} are in more than one partition; a store belongs to one partition (train "
                         "a teacher at two resolutions from two stores, e.g. tiny_sam and tiny_sam@256)")
    union = tuple(keys)
    if teachers and set(teachers) != set(union):
        raise ValueError(f"teachers {list(teachers)} are not the stores the partitions name ({list(union)}); give "
                         "the partitions alone (the run's teachers are theirs)")
    return parts, union


def partition_sizes(texts: tuple[str, ...] | list[str], img_size: int) -> list[int]:
    """The student sides a run trains at: each partition's (text form), or img_size without partitions."""
    return list(dict.fromkeys(parse_partition(t).img_size for t in texts)) if texts else [img_size]


def check_partition_stores(texts: tuple[str, ...] | list[str], teachers: list[str],
                           resolutions: dict[str, list[int]]) -> None:
    """params.yaml's partitions (text form) parse and name only stores it extracts: extract.teachers, and
    <teacher>@<side> for each extract.resolutions entry (of those teachers: params.py checks); ValueError."""
    from stages.teachers.registry import get_teacher_spec
    from store_schema.layout import store_key

    stores = list(teachers) + [store_key(t, r) for t, sides in resolutions.items() for r in sides]
    for key in stores[len(teachers):]:
        try:
            get_teacher_spec(key)  # the side fits the teacher: a patch multiple, not its own side
        except ValueError as e:
            raise ValueError(f"extract.resolutions: {e}") from None
    for i, text in enumerate(texts):
        try:
            part = parse_partition(text)
        except ValueError as e:
            raise ValueError(f"distill.partitions[{i}]: {e}") from None
        unknown = [t for t in part.teachers if t not in stores]
        if unknown:
            raise ValueError(f"distill.partitions[{i}] names stores {unknown} that are not extracted; stores: "
                             f"{stores} (extract.teachers, and <teacher>@<side> for each extract.resolutions entry)")
