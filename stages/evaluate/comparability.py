"""Which runs a sweep report may rank together, and which evaluations still describe their runs.

The PHI-S paper (arXiv 2410.01680) ranks normalization variants trained on the same data against the
same teachers and scored on the same benchmark; an average rank across runs that saw different corpora,
teacher sets or evaluation splits compares nothing. So before ranking, the report checks per run:

- **fresh evaluation**: eval/metrics.json was measured on the run's current last checkpoint (same
  ``checkpoint_step`` and ``run_fingerprint``, stages.distill.run.run_fingerprint); an evaluation of an
  older state (the run was extended, resumed or retrained since) is *stale*;
- **finished**: the checkpoint reached the run's ``steps`` (an interrupted run is *unfinished*: ranked
  only when allowed, marked, and its cost counted at the steps it trained);
- **comparable**: all runs share the student, the training length (target ``steps``), the teacher set, the
  corpus (manifest hash) and the evaluation split (name and sample count). A 20-step run ranked against
  200-step runs measures the training length, not the normalization.

A violation is a ValueError saying which runs differ and how, unless the caller allows it, in which case
the report marks the runs (``RunFacts.status``) instead. Incomparable runs can instead be ranked only
within their groups (``comparable_groups``: runs that agree on every field above), each group its own
ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from stages.distill.run import run_progress


@dataclass(frozen=True)
class RunFacts:
    """What a reader needs to know about one run beside its scores."""

    run: str
    norm: str
    student: str
    steps: int  # the run's target
    steps_done: int  # its last checkpoint
    seed: int
    teachers: tuple[str, ...]
    manifest_hash: str
    split: str
    num_samples: int
    stale: bool
    finished: bool

    @property
    def status(self) -> str:
        marks = []
        if not self.finished:
            marks.append(f"unfinished ({self.steps_done}/{self.steps} steps)")
        if self.stale:
            marks.append("stale eval (not of the last checkpoint)")
        return "; ".join(marks) or "ok"


def run_facts(run_dir: Path, ev: dict[str, Any], config: dict[str, Any]) -> RunFacts:
    """The facts of one run from its eval/metrics.json dict, config.json dict and current checkpoint."""
    progress = run_progress(run_dir)
    stale = (ev.get("run_fingerprint") != progress["fingerprint"]
             or ev.get("checkpoint_step") != progress["checkpoint_step"])
    return RunFacts(run=Path(run_dir).name, norm=str(config.get("norm", "")), student=str(config.get("student", "")),
                    steps=progress["steps"], steps_done=progress["checkpoint_step"], seed=int(config.get("seed", 0)),
                    teachers=tuple(sorted(config.get("teachers", []))),
                    manifest_hash=str(config.get("manifest_hash", "")), split=str(ev.get("split", "")),
                    num_samples=int(ev.get("num_samples", 0)), stale=stale, finished=progress["finished"])


def check_runs(facts: list[RunFacts], *, allow_stale: bool = False, allow_unfinished: bool = False,
               allow_incomparable: bool = False, by_group: bool = False) -> list[str]:
    """Raise ValueError for stale evaluations, unfinished runs or incomparable runs unless allowed (or, for
    incomparable runs, ranked ``by_group``); returns the notes the report prints about what it ranked and
    why."""
    notes: list[str] = []
    stale = [f.run for f in facts if f.stale]
    if stale:
        msg = (f"the evaluations of {stale} do not match their runs' last checkpoints (the runs were extended, "
               f"resumed or retrained after `pipeline evaluate`); run `pipeline evaluate` on them again")
        if not allow_stale:
            raise ValueError(msg + ", or pass --allow-stale to report them marked")
        notes.append(msg)
    unfinished = [f"{f.run} ({f.steps_done}/{f.steps} steps)" for f in facts if not f.finished]
    if unfinished:
        msg = f"runs {unfinished} did not finish training"
        if not allow_unfinished:
            raise ValueError(msg + "; resume them (`pipeline distill ... --resume`), or pass --allow-unfinished "
                             "to report them marked")
        notes.append(msg)
    differ = differences(facts)
    if differ:
        msg = "the runs are not comparable (" + ". ".join(differ) + ")"
        if by_group:
            notes.append(msg + "; each group of comparable runs is ranked on its own, never against another group")
        elif not allow_incomparable:
            raise ValueError(msg + "; pass --by-group to rank each group of comparable runs on its own, report "
                             "them separately, or pass --allow-incomparable to rank them together anyway")
        else:
            notes.append(msg + "; ranked together anyway (--allow-incomparable): their ranks mix these differences "
                         "with the normalization's effect")
    return notes


# What two runs must share to be ranked against each other: (label in messages, key of a run's value).
COMPARED: tuple[tuple[str, Callable[[RunFacts], str]], ...] = (
    ("students", lambda f: f.student),
    ("training steps", lambda f: str(f.steps)),
    ("teacher sets", lambda f: ", ".join(f.teachers)),
    ("corpora (manifests)", lambda f: f.manifest_hash[:12]),
    ("evaluation splits", lambda f: f"{f.split} ({f.num_samples} samples)"),
)


def differences(facts: Sequence[RunFacts]) -> list[str]:
    """One phrase per compared field on which the runs differ: "<label> differ: <value> -> [runs]; ..."."""
    out = []
    for label, key in COMPARED:
        groups: dict[str, list[str]] = {}
        for f in facts:
            groups.setdefault(key(f), []).append(f.run)
        if len(groups) > 1:
            out.append(f"{label} differ: " + "; ".join(f"{v} -> {runs}" for v, runs in sorted(groups.items())))
    return out


def group_label(f: RunFacts) -> str:
    """What a comparable group shares, for its heading: student, steps, teachers, corpus, split."""
    return (f"student {f.student}, {f.steps} steps, teachers {', '.join(f.teachers)}, corpus "
            f"{f.manifest_hash[:12]}, eval {f.split} ({f.num_samples} samples)")


def comparable_groups(facts: Sequence[RunFacts]) -> list[list[RunFacts]]:
    """The runs partitioned into groups that agree on every COMPARED field, in first-seen order."""
    groups: dict[tuple[str, ...], list[RunFacts]] = {}
    for f in facts:
        groups.setdefault(tuple(key(f) for _, key in COMPARED), []).append(f)
    return list(groups.values())
