"""The parts of the sweep report that say what was compared and how to read it (PHI-S arXiv 2410.01680,
AM-RADIO arXiv 2312.06709): per run its student, steps, seed, evaluation split and teacher set; which way
each column is better; what the probe is; teacher-matching errors also as a *normalized* error (MSE divided
by the teacher's mean per-channel variance, so teachers whose raw MSEs span 1e-9 to 10 read on one scale);
the per-channel error-variance ranges of PHI-S Table 5; and the sweep's cost in time.

Plain functions from already-read data to Markdown lines (report.py does the reading).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from stages.evaluate.comparability import RunFacts


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def train_seconds(history: Sequence[Mapping[str, Any]]) -> float | None:
    """Training wall time of a run from its metrics.jsonl records (elapsed_s of the last), None if absent."""
    for record in reversed(history):
        if "elapsed_s" in record:
            return float(record["elapsed_s"])
    return None


def runs_lines(facts: Sequence[RunFacts], notes: Sequence[str],
               histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The "Runs" section: one row per run with what it is, and any allowed exception."""
    lines = ["## Runs", "",
             "| run | norm | student | steps | seed | eval split (samples) | teachers | training time | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f in facts:
        secs = train_seconds(histories.get(f.run, []))
        steps = f"{f.steps}" if f.finished else f"{f.steps_done} of {f.steps}"
        lines.append(f"| {f.run} | {f.norm} | {f.student} | {steps} | {f.seed} | {f.split} ({f.num_samples}) | "
                     f"{', '.join(f.teachers)} | {_duration(secs) if secs is not None else 'n/a'} | "
                     f"{f.status if f.status == 'ok' else '**' + f.status + '**'} |")
    if notes:
        lines += ["", "**Reported although**:"] + [f"- {n}" for n in notes]
    return lines


def probe_feature_line(evals: Mapping[str, Mapping[str, Any]]) -> str:
    """Which feature the kNN / linear probe used, from the runs' eval/metrics.json (runs evaluated before
    the choice was recorded used summary token 0)."""
    feats = sorted({(ev["probe"].get("feature", "raw student summary token 0, view 0"),
                     ev["probe"].get("summary_tokens", 1)) for ev in evals.values() if ev.get("probe")})
    if not feats:
        return "Probe: not evaluated (no labels)."
    if len(feats) > 1:
        return ("**Probe features differ between runs** (" + "; ".join(f"{f} ({k} token(s))" for f, k in feats)
                + "): their kNN accuracies are not comparable; re-evaluate with one `--knn-feature`.")
    f, k = feats[0]
    return f"Probe feature: {f} ({k} summary token(s))."


def reading_lines(metric_names: Sequence[str], higher_is_better: set[str], probe_feature: str = "") -> list[str]:
    """How to read the columns: direction of each metric and what the probe is (``probe_feature``: the
    line ``probe_feature_line`` gives)."""
    lower = sorted(m for m in metric_names if m not in higher_is_better)
    higher = sorted(m for m in metric_names if m in higher_is_better)
    lines = ["## How to read the columns", ""]
    if lower:
        lines.append("Lower is better: " + ", ".join(f"`{m}`" for m in lower) + " (`mse`: mean squared error "
                     "between the student's prediction, mapped back to the teacher's own space, and the stored "
                     "teacher output, over every token and channel of the held-out split).")
    if higher:
        lines.append("Higher is better: " + ", ".join(f"`{m}`" for m in higher) + ".")
    lines += ["", probe_feature or "Probe feature: the student's raw summary tokens (before any head) of the full image.",
              "`probe/knn_acc` is a k-nearest-neighbour classifier (cosine similarity, votes weighted by "
              "exp(sim / τ), τ = 0.07) fitted on the labeled train-split images and scored on the val split; "
              "`probe/linear_acc` is an L2-regularized logistic-regression classifier on the same features. Both are "
              "accuracies in [0, 1]; with a few labeled images they move in coarse steps."]
    return lines


def normalized_error_lines(evals: Mapping[str, Mapping[str, Any]],
                           teacher_var: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Per run, teacher and token kind: raw MSE, normalized error (MSE / mean per-channel teacher variance),
    and the range (max - min) of the per-channel error variance in teacher and in normalized space (PHI-S
    Table 5: a wide range means some channels are matched far worse than others)."""
    lines = ["## Normalized error and error-variance ranges", "",
             "normalized error = MSE / (mean per-channel variance of the teacher's stored outputs): 1.0 is as bad "
             "as predicting the teacher's mean, so teachers of very different scales read on one scale. "
             "Error-variance range = max - min over channels of the variance of the prediction error, in the "
             "teacher's space and in the variant's normalized (loss) space (PHI-S Table 5). Lower is better "
             "everywhere in this table.", "",
             "| run | teacher/kind | MSE | normalized error | err. var. range (teacher) | err. var. range (normalized) |",
             "|---|---|---|---|---|---|"]
    above, cosine_summary = [], []
    for run, ev in evals.items():
        for teacher, kinds in ev["teachers"].items():
            for kind, vals in kinds.items():
                var = teacher_var.get(teacher, {}).get(kind)
                nerr = float(vals["mse"]) / var if var else None
                if nerr is not None and nerr > 1:
                    (cosine_summary if kind == "summary" and ev.get("summary_loss", "cosine") == "cosine"
                     else above).append((f"{run} {teacher}/{kind}", nerr))
                norm_range = vals.get("norm_err_var_range")
                lines.append(f"| {run} | {teacher}/{kind} | {_fmt(float(vals['mse']))} | "
                             f"{_fmt(nerr) if nerr is not None else 'n/a'} | "
                             f"{_fmt(float(vals.get('err_var_range', float('nan'))))} | "
                             f"{_fmt(float(norm_range)) if norm_range is not None else 'n/a'} |")
    return lines + _normalized_error_notes(above, cosine_summary)


def _normalized_error_notes(above: list[tuple[str, float]], cosine_summary: list[tuple[str, float]]) -> list[str]:
    """Lines explaining normalized errors above 1 (worse than the teacher's mean), cosine-trained summaries apart."""
    lines = []
    if cosine_summary:
        top = max(v for _, v in cosine_summary)
        lines += ["", f"Summary rows of runs trained with the cosine summary loss (the default; AM-RADIO / PHI-S) "
                  f"have normalized errors above 1 (up to {_fmt(top)}): that loss matches each summary's "
                  "direction, not its length, so their MSE measures a length the student was never trained to "
                  "match. It is reported, not ranked; read the summary's `cos_mean` instead."]
    if above:
        lines += ["", "Normalized error above 1 (worse than predicting the teacher's mean output) for: "
                  + ", ".join(f"{w} ({_fmt(v)})" for w, v in above) + "; such a student has not learned that "
                  "teacher's outputs (too few steps, or a variant that fails on it)."]
    return lines


TRAINING_TIME_DEFINITION = (
    "Training time = wall clock of the training loop, student only (metrics.jsonl's `elapsed_s`): from the first "
    "batch request to the last logged step, summed over resumes. It includes data loading, the loader's warm-up "
    "(first-touch decoding and caching of store units, which a later run on the same store may find already "
    "cached) and checkpoint writes; it excludes building the model, opening the stores and evaluation. "
    "Steady time per step = median over the logged intervals after the first of Δelapsed / Δsteps; warm-up = "
    "the first interval's time beyond that pace.")


def step_timing(history: Sequence[Mapping[str, Any]]) -> tuple[float, float] | None:
    """(steady seconds per step, warm-up seconds) from metrics.jsonl records (see TRAINING_TIME_DEFINITION);
    None with fewer than two timed records."""
    timed = [(int(r["step"]), float(r["elapsed_s"])) for r in history if "elapsed_s" in r and "step" in r]
    paces = [(e1 - e0) / (s1 - s0) for (s0, e0), (s1, e1) in zip(timed, timed[1:]) if s1 > s0]
    if not paces:
        return None
    steady = float(sorted(paces)[len(paces) // 2])
    first_step, first_elapsed = timed[0]
    return steady, max(first_elapsed - first_step * steady, 0.0)


def time_cost_lines(facts: Sequence[RunFacts], histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Training wall time of the sweep (sum over runs) with its definition, each run's steady time per step
    and warm-up, and a line naming runs whose time is mostly warm-up."""
    secs = {f.run: train_seconds(histories.get(f.run, [])) for f in facts}
    known = {r: s for r, s in secs.items() if s is not None}
    if not known:
        return ["Training time: not recorded (runs from an older version log no elapsed_s)."]
    line = (f"Training time (wall clock, student only, from metrics.jsonl): **{_duration(sum(known.values()))}** "
            f"over {len(known)} runs ({', '.join(f'{r}: {_duration(s)}' for r, s in known.items())}).")
    missing = sorted(set(secs) - set(known))
    lines = [line + (f" Not recorded for {missing}." if missing else ""), "", TRAINING_TIME_DEFINITION]
    timing = {r: step_timing(histories.get(r, [])) for r in known}
    timed = {r: t for r, t in timing.items() if t is not None}
    if timed:
        lines.append("Steady time per step / warm-up: " + "; ".join(
            f"{r}: {1e3 * pace:.3g} ms / {_duration(warm)}" for r, (pace, warm) in timed.items()) + ".")
        warm = [r for r, (_, w) in timed.items() if w > 0.5 * known[r]]
        if warm:
            lines.append(f"Mostly warm-up (more than half of the run's time): {', '.join(warm)}; compare the "
                         "steady time per step, not the totals, when comparing the variants' speed.")
    return lines
