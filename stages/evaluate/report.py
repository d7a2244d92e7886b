"""Sweep report: one table across variants, ranks by category, storage fidelity, plots and the cost.

Ranks variants the way the PHI-S paper does (arXiv 2410.01680, Table 1): per metric, ties averaged, the
ranks averaged inside each of its six categories (Teacher MSE, Classification, Segmentation, SAM-COCO,
LLaVA-1.5, Probe 3D; declared in ``stages.evaluate.categories``), then over the categories the runs have.
The report says which of the six its average covers, names the missing ones, and calls it "the paper's
average" only when all six are there. Summary MSE, open-vocabulary mIoU, other teachers' zero-shot and
teacher references are reported, not ranked. Runs that differ only in their seed are one variant: every metric is
shown as mean ± std over seeds, the means are ranked, and the report names the pairs of variants that are
within one std of each other. The storage-fidelity section prints, per variant and teacher, the storage
NMSE in the space the loss uses against the teacher's own bf16 noise (``stages.normalize.fidelity``) and
warns for each variant that fails. Also states what the offline store saved: teacher forward passes done
once (one per teacher per image·view) against what the same sweep costs online, where every training step
of every run re-runs every teacher on its batch (AM-RADIO's recipe, arXiv 2312.06709).

Inputs: run directories (docs/ARCHITECTURE.md "Run directory") with ``eval/metrics.json`` written by
``stages.evaluate.evaluate.evaluate_run``, plus the feature store for teacher statistics.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stages.evaluate import plots, report_context, teacher_table
from stages.evaluate.comparability import RunFacts, check_runs, comparable_groups, group_label, run_facts
from stages.evaluate.bench_report import bench_protocol_lines, flatten_bench
from stages.evaluate.categories import CATEGORIES, PAPER_CATEGORIES, categorize, coverage_sentence, higher_is_better
from stages.evaluate.recipe_report import recipe_lines
from stages.evaluate.ranking import AVG, rank_runs
from stages.distill.run_dir import read_config_json, read_eval, read_history
from stages.evaluate.evaluate import config_field

REPORT_MD, REPORT_CSV = "report.md", "report.csv"
# eval/metrics.json sections of downstream benchmarks whose numbers are flattened into metrics
DOWNSTREAM_SECTIONS = ("zeroshot", "seg")
PLOT_ERRORS, PLOT_SPECTRA, PLOT_LOSS = "teacher_errors.png", "teacher_spectra.png", "loss_curves.png"
PLOT_PROBE = "probe_accuracy.png"


def _flatten_numbers(prefix: str, tree: Any, out: dict[str, float]) -> None:
    """Numeric leaves of a nested dict as ``prefix/key/...`` (None and non-numbers skipped)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            _flatten_numbers(f"{prefix}/{k}", v, out)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix] = float(tree)


def flatten_metrics(ev: dict[str, Any]) -> dict[str, float]:
    """Metrics of one eval/metrics.json by flattened name: ``<teacher>/<kind>/mse``, ``probe/knn_acc``,
    ``probe/linear_acc`` and every number under the downstream sections ``zeroshot`` and ``seg``
    (e.g. ``zeroshot/<teacher>/top1``, ``seg/linear_miou``). Which are ranked, and how, is
    ``stages.evaluate.categories``'s business."""
    flat: dict[str, float] = {}
    for teacher, kinds in ev["teachers"].items():
        for kind, vals in kinds.items():
            flat[f"{teacher}/{kind}/mse"] = float(vals["mse"])
    for name in ("knn_acc", "linear_acc"):
        if ev.get("probe") and ev["probe"].get(name) is not None:
            flat[f"probe/{name}"] = float(ev["probe"][name])
    for section in DOWNSTREAM_SECTIONS:
        if ev.get(section):
            _flatten_numbers(section, ev[section], flat)
    flat.update(flatten_bench(ev.get("bench") or {}))  # bench/<dataset>/...: `pipeline evaluate --on`
    return flat


@dataclass(frozen=True)
class SweepCost:
    """Teacher forward passes: done once into the store vs. the same sweep run online."""

    store_passes: dict[str, int]  # teacher → valid image·views in its store
    online_passes: dict[str, int]  # teacher → Σ over runs of steps × batch

    @property
    def store_total(self) -> int:
        return sum(self.store_passes.values())

    @property
    def online_total(self) -> int:
        return sum(self.online_passes.values())

    @property
    def ratio(self) -> float:
        return self.online_total / max(self.store_total, 1)


def sweep_cost(configs: dict[str, dict[str, Any]], store_passes: dict[str, int],
               steps_done: dict[str, int] | None = None) -> SweepCost:
    """Online cost of the sweep: each run's ``steps × batch_size`` teacher forwards, per teacher it used
    (steps: the steps a run trained, ``steps_done[run]``, when given, else its configured steps)."""
    online = {t: 0 for t in store_passes}
    for run, cfg in configs.items():
        steps = int((steps_done or {}).get(run, config_field(cfg, "steps", run)))
        # per resolution partition (config.json "partitions"; runs from before list one implicitly)
        parts = cfg.get("partitions") or [{"batch_size": config_field(cfg, "batch_size", run),
                                          "teachers": config_field(cfg, "teachers", run)}]
        for part in parts:
            for teacher in part["teachers"]:
                if teacher not in online:
                    raise ValueError(f"run {run!r} used teacher {teacher!r} with no store; stores: {sorted(online)}")
                online[teacher] += steps * int(part["batch_size"])
    return SweepCost(store_passes=store_passes, online_passes=online)


def _store_facts(store_root: Path, teachers: list[str]
                 ) -> tuple[dict[str, int], dict[str, Any], dict[str, dict[str, float]]]:
    """(valid image·views per teacher, patch covariance per teacher, mean per-channel variance per teacher
    and token kind) from the stores' merged stats."""
    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    passes, covs, var = {}, {}, {}
    for t in teachers:
        store = open_teacher_store(teacher_store_path(store_root, t))
        passes[t] = int(store.valid[...].sum())
        covs[t] = store.stats("patches").covariance()
        var[t] = {k: float(np.mean(np.diag(store.stats(k).covariance()))) for k in store.kinds}
    return passes, covs, var


# Config fields that do not make two runs different experiments: the seed (runs of one variant over
# seeds are averaged) and where / how fast a run was computed.
_NOT_EXPERIMENT = frozenset({"seed", "out_dir", "root", "steps_done", "log_every", "ckpt_every", "ckpt_minutes",
                             "run_id", "num_workers",
                             "prefetch_factor", "device"})


def experiment_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The config fields that make a run's experiment: all but ``_NOT_EXPERIMENT``; a random student
    initialization counts by its source only (its recorded id, ``random-init:seed=N``, follows the seed)."""
    out = {k: v for k, v in config.items() if k not in _NOT_EXPERIMENT}
    init = out.get("student_init")
    if isinstance(init, dict) and init.get("source") == "random":
        out["student_init"] = {"source": "random"}
    return out


@dataclass(frozen=True)
class Variant:
    """One sweep variant: the runs (one per seed) that share every config field but the seed."""

    name: str
    norm: str
    summary_loss: str
    runs: tuple[str, ...]
    seeds: tuple[int, ...]
    mean: dict[str, float]
    std: dict[str, float]  # sample std over seeds (ddof 1); NaN with one seed


def group_variants(evals: dict[str, dict[str, Any]], configs: dict[str, dict[str, Any]]) -> list[Variant]:
    """Group runs into variants (same config up to the seed), with per-metric mean and std over seeds.

    A variant is named by its normalization (``norm``); when two variants share a norm, by
    ``<norm>/<summary loss>`` if that tells them apart (a sweep over summary losses), else by its first
    run. Two runs of one variant with the same seed are an error."""
    groups: dict[str, list[str]] = {}
    for run in evals:
        key = json.dumps(experiment_fields(configs[run]), sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    norms = [configs[runs[0]].get("norm", evals[runs[0]].get("norm", "")) for runs in groups.values()]
    by_loss = [f"{n}/{configs[runs[0]].get('summary_loss', 'variant')}" for n, runs in zip(norms, groups.values())]
    out = []
    for (key, runs), norm, with_loss in zip(groups.items(), norms, by_loss):
        seeds = [int(configs[r].get("seed", 0)) for r in runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"runs {runs} are the same variant with repeated seeds {seeds}")
        flats = [flatten_metrics(evals[r]) for r in runs]
        shared = sorted(set.intersection(*(set(f) for f in flats)))
        vals = {m: np.array([f[m] for f in flats]) for m in shared}
        name = norm if norms.count(norm) == 1 else with_loss if by_loss.count(with_loss) == 1 else runs[0]
        out.append(Variant(name=name, norm=norm,
                           summary_loss=str(configs[runs[0]].get("summary_loss", "variant")),
                           runs=tuple(runs), seeds=tuple(seeds),
                           mean={m: float(v.mean()) for m, v in vals.items()},
                           std={m: float(v.std(ddof=1)) if len(v) > 1 else float("nan") for m, v in vals.items()}))
    return out


@dataclass(frozen=True)
class Ranking:
    """What the report ranks and how: per-variant category ranks and the metrics behind them."""

    ranks: dict[str, dict[str, float]]  # variant -> {category: rank, ..., "avg": mean over categories}
    categories: dict[str, list[str]]  # category -> ranked metrics (only categories that have some)
    empty_categories: list[str]  # declared categories none of whose metrics the runs have
    reported: list[str]  # metrics every variant has but that are not ranked (summary MSE, ...)
    unranked: dict[str, list[str]]  # metric -> variants lacking it (so it cannot be ranked)
    zeroshot_teacher: str | None = None  # the one teacher whose zero-shot is ranked

    @property
    def paper_average(self) -> bool:
        """True when the average covers all six of the paper's categories."""
        return set(PAPER_CATEGORIES) <= set(self.categories)


def rank_variants(variants: list[Variant], zeroshot_teacher: str | None = None) -> Ranking:
    """Rank variants by their seed means (``rank_runs`` with the declared categories; zero-shot counts for
    ``zeroshot_teacher`` only)."""
    if not variants:
        raise ValueError("nothing to rank: no runs")
    every = set.union(*(set(v.mean) for v in variants))
    shared = set.intersection(*(set(v.mean) for v in variants))
    unranked = {m: sorted(v.name for v in variants if m not in v.mean) for m in sorted(every - shared)}
    declared = categorize(shared, zeroshot_teacher)
    cats = {c: ms for c, ms in declared.items() if ms}
    if not cats:
        raise ValueError(f"the runs share no ranked metric (shared: {sorted(shared)}; categories: {CATEGORIES})")
    ranked = {m for ms in cats.values() for m in ms}
    ranks = rank_runs({v.name: v.mean for v in variants}, cats, higher_is_better(ranked))
    return Ranking(ranks=ranks, categories=cats, empty_categories=[c for c, ms in declared.items() if not ms],
                   reported=sorted(shared - ranked), unranked=unranked, zeroshot_teacher=zeroshot_teacher)


def ranked_zeroshot(evals: dict[str, dict[str, Any]], configs: dict[str, dict[str, Any]] | None = None) -> str | None:
    """The zero-shot teacher the runs' evaluations designated (``zeroshot_ranked``); None when none was
    evaluated. An evaluation from before the designation was recorded counts the first teacher of its
    run (config.json order) with a zero-shot result, the default rule. Runs that designated different
    teachers cannot be ranked together: ValueError."""
    named = set()
    for run, ev in evals.items():
        if ev.get("zeroshot_ranked"):
            named.add(ev["zeroshot_ranked"])
        elif ev.get("zeroshot"):
            order = list((configs or {}).get(run, {}).get("teachers", [])) + sorted(ev["zeroshot"])
            named.add(next(t for t in order if t in ev["zeroshot"]))
    if len(named) > 1:
        raise ValueError(f"the runs rank the zero-shot of different teachers {sorted(named)}: re-evaluate them with "
                         "one --zeroshot-teacher")
    return named.pop() if named else None


def within_one_std(variants: list[Variant], metric: str) -> list[tuple[str, str]]:
    """Pairs of variants whose seed means of ``metric`` differ by less than the larger of their two stds
    (needs at least two seeds in both; the order cannot then be told apart from seed noise)."""
    pairs = []
    for i, a in enumerate(variants):
        for b in variants[i + 1:]:
            sa, sb = a.std.get(metric, float("nan")), b.std.get(metric, float("nan"))
            if np.isfinite(sa) and np.isfinite(sb) and abs(a.mean[metric] - b.mean[metric]) < max(sa, sb):
                pairs.append((a.name, b.name))
    return pairs


def report_rows(evals: dict[str, dict[str, Any]], configs: dict[str, dict[str, Any]] | None = None,
                ) -> tuple[list[dict[str, Any]], Ranking, list[Variant]]:
    """Table rows (one per variant, best average rank first), the ranking and the variants.

    ``configs`` (run -> config.json dict) groups runs into variants over seeds; without it every run
    is its own variant (seed 0)."""
    if configs is None:
        configs = {r: {"norm": ev.get("norm", ""), "run": r} for r, ev in evals.items()}
    variants = group_variants(evals, configs)
    ranking = rank_variants(variants, ranked_zeroshot(evals, configs))
    return variant_rows(variants, ranking), ranking, variants


def variant_rows(variants: list[Variant], ranking: Ranking) -> list[dict[str, Any]]:
    """Table rows of ranked variants, best average rank first."""
    rows = []
    for v in sorted(variants, key=lambda v: (ranking.ranks[v.name][AVG], v.name)):
        row: dict[str, Any] = {"variant": v.name, "norm": v.norm, "summary_loss": v.summary_loss,
                               "seeds": len(v.seeds)}
        for m in [*sorted(m for ms in ranking.categories.values() for m in ms), *ranking.reported]:
            row[m], row[f"{m} std"] = v.mean[m], v.std[m]
        row.update({f"rank {c}": ranking.ranks[v.name][c] for c in ranking.categories})
        row["avg_rank"] = ranking.ranks[v.name][AVG]
        rows.append(row)
    return rows


def clipped_share(history: list[dict[str, Any]]) -> float | None:
    """Share of a run's steps whose gradient norm the clip cut, from metrics.jsonl (each record's
    clip_frac covers the steps since the previous record); None for runs logged without clip_frac."""
    done, clipped, last = 0, 0.0, 0
    for rec in history:
        if "clip_frac" not in rec:
            return None
        steps = int(rec["step"]) - last
        clipped += float(rec["clip_frac"]) * steps
        done, last = done + steps, int(rec["step"])
    return clipped / done if done else None


def clip_lines(variants: list[Variant], configs: dict[str, dict[str, Any]],
               histories: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line: the grad-clip setting(s) and the clipped share of steps per variant (mean over seeds)."""
    clips = sorted({f"{float(configs[r]['grad_clip']):g}" if "grad_clip" in configs[r] else "not recorded"
                    for v in variants for r in v.runs})
    parts = []
    for v in variants:
        shares = [clipped_share(histories[r]) for r in v.runs]
        known = [x for x in shares if x is not None]
        parts.append(f"{v.name} {100 * float(np.mean(known)):.0f}%" if known else f"{v.name} not logged")
    return [f"Gradient clipping: grad_clip {', '.join(clips)} (0 = off); clipped share of "
            f"steps: {'; '.join(parts)}."]


def fidelity_report_lines(store_root: Path, teachers: list[str], variants: list[Variant]) -> list[str]:
    """Markdown lines: per variant, teacher and token kind, the measured storage NMSE in the space that
    variant's loss uses against the teacher's own bf16 noise (``stages.normalize.fidelity``), a warning
    per failing variant, and the split the normalizers were fitted on."""
    from stages.normalize.store_fit import normalizer_moments
    from stages.extract.fidelity import read_fidelity
    from stages.normalize import kind_variant
    from stages.normalize.fidelity import GATE_RATIO, MIN_COSINE, remedy
    from store_schema.layout import teacher_store_path
    from store_schema.teacher_store import open_teacher_store

    lines = [f"Storage NMSE in the space each variant's loss uses, against the teacher's own bf16-autocast noise "
             f"in the same space; gate: ratio ≤ {GATE_RATIO} and minimum token cosine ≥ {MIN_COSINE}.", "",
             "| variant | teacher | kind | loss space | storage NMSE | teacher bf16 NMSE | ratio | min cos | |",
             "|---|---|---|---|---|---|---|---|---|"]
    missing, failed, splits, fixes, raw_failed = [], {}, set(), {}, set()
    for t in teachers:
        store = open_teacher_store(teacher_store_path(store_root, t))
        splits |= {f"{t}/{k}: {normalizer_moments(store, k)[1]}" for k in store.kinds}
        checks, why = read_fidelity(store_root, store)
        if checks is None:
            missing.append(f"- {t}: {why}")
            continue
        by = {(c.variant, c.kind): c for c in checks}
        for v in variants:
            for kind in store.kinds:
                space = kind_variant(v.norm, kind, v.summary_loss).value
                c = by[(space, kind)]
                lines.append(f"| {v.name} | {t} | {kind} | {space} | {c.storage_nmse:.3g} | {c.teacher_bf16_nmse:.3g} | "
                             f"{c.ratio:.3g} | {c.storage_min_cos:.6f} | {'ok' if c.passed else '**FAIL**'} |")
                if not c.passed:
                    failed.setdefault(v.name, []).append(f"{t}/{kind}")
                    if space == "mse":
                        raw_failed.add(f"{t}/{kind}")
                    passing = {x.variant for x in checks} - {x.variant for x in checks if not x.passed}
                    fixes.setdefault(v.name, []).append(
                        f"{t}/{kind}: " + remedy(space, [c], store.codec.keepbits, passing).split(": ", 1)[1])
    lines += fidelity_reading_lines(failed, raw_failed, measured=len(lines) > 4)  # 4: header lines
    lines += [""] + [f"**WARNING**: variant {name} fails the fidelity gate on {', '.join(where)}: storage noise "
                     "there is not negligible against the teacher's own bf16 noise, so part of what its rank "
                     "measures is the storage, not the normalization. To serve it: " + "; ".join(fixes[name]) + "."
                     for name, where in failed.items()]
    if missing:
        lines += ["Fidelity not available for:", *missing]
    lines += ["", "Normalizers fitted on split: " + "; ".join(sorted(splits)) + "."]
    return lines


def fidelity_reading_lines(failed: dict[str, list[str]], raw_failed: set[str], *, measured: bool = True) -> list[str]:
    """What the fidelity verdicts mean and what to do, in the report itself (docs/SWEEP.md has the detail)."""
    from stages.normalize.fidelity import GATE_RATIO, MIN_COSINE

    lines = ["", f"How to read it: the storage NMSE is the error the store's bf16 rounding (BitRound, kept bits) "
             "adds to the targets, measured after the variant's own normalization; the teacher's bf16 NMSE is the "
             "error the teacher itself has when run in bf16. **ok** means the storage error is at most "
             f"{GATE_RATIO} of the teacher's own and no token's cosine falls below {MIN_COSINE}: storage is "
             "negligible for that variant. **FAIL** means the student of that variant partly trains on rounding "
             "noise; its rank is then also a statement about the store, and what serves it is listed below "
             "(more kept bits at extraction, or its noise-floored `_nf` variant)."]
    if not failed:
        return lines + (["Every variant passes: storage is negligible for all of them."] if measured else [])
    if raw_failed:
        lines.append(f"Raw targets fail too ({', '.join(sorted(raw_failed))}: the `mse` space, no normalization). "
                     "Then the reference is unusually small rather than the store unusually lossy: tiny random "
                     "teachers on a CPU (as in the demo) barely move under bf16 autocast. Measure a real teacher on "
                     "the GPU that serves it (`pipeline store fidelity`) before re-extracting for this verdict.")
    return lines


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pm(row: dict[str, Any], m: str) -> str:
    std = row[f"{m} std"]
    return _fmt(row[m]) if not np.isfinite(std) else f"{row[m]:.4g} ± {std:.2g}"


@dataclass(frozen=True)
class RankedGroup:
    """Variants ranked against each other: the whole report, or one group of comparable runs."""

    label: str | None  # what the group's runs share (None: the report ranks all its runs together)
    rows: list[dict[str, Any]]
    ranking: Ranking
    variants: list[Variant]


def rank_groups(evals: dict[str, dict[str, Any]], configs: dict[str, dict[str, Any]], facts: list[RunFacts],
                *, by_group: bool) -> list[RankedGroup]:
    """One RankedGroup of every run, or (``by_group``) one per group of comparable runs
    (``comparability.comparable_groups``) when they are not all comparable. Variants are named over all
    runs, so a name means one variant across groups."""
    variants = group_variants(evals, configs)
    zeroshot = ranked_zeroshot(evals, configs)
    groups = comparable_groups(facts) if by_group else [facts]
    out = []
    for g in groups:
        names = {f.run for f in g}
        members = [v for v in variants if set(v.runs) & names]
        split = [v.name for v in members if not set(v.runs) <= names]
        if split:
            raise ValueError(f"the seeds of variant(s) {split} fall into different comparable groups (evaluated on "
                             "different splits?); re-evaluate them alike")
        ranking = rank_variants(members, zeroshot)
        out.append(RankedGroup(label=group_label(g[0]) if len(groups) > 1 else None,
                               rows=variant_rows(members, ranking), ranking=ranking, variants=members))
    return out


def _ranking_lines(rows: list[dict[str, Any]], ranking: Ranking, variants: list[Variant],
                   title: str = "## Ranking") -> list[str]:
    ranked = [m for ms in ranking.categories.values() for m in ms]
    cats = list(ranking.categories)
    seeds = sorted({len(v.seeds) for v in variants})
    avg_name = "paper's average rank" if ranking.paper_average else f"average rank ({len(cats)} of 6 categories)"
    cols = ["variant", "norm", "summary loss", "seeds", *ranked, *(f"rank: {c}" for c in cats), avg_name]
    zs = (f"Zero-shot is ranked for one teacher, `{ranking.zeroshot_teacher}` (the paper ranks its DFN CLIP's "
          "only); other teachers' zero-shot is reported, not ranked." if ranking.zeroshot_teacher else
          "No zero-shot was evaluated.")
    lines = [
        title, "",
        "How it is ranked (PHI-S paper, Table 1): each variant is ranked per metric on its mean over seeds "
        "(1 = best, ties averaged), the ranks are averaged inside each of the paper's six categories, then "
        "over the categories. Categories used: " + "; ".join(f"**{c}** ({', '.join(f'`{m}`' for m in ms)})"
                                                           for c, ms in ranking.categories.items()) + ".",
        coverage_sentence(ranking.categories), zs,
    ]
    lines += [f"Values are mean ± std (sample std) over {'/'.join(map(str, seeds))} seed(s) per variant.", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["variant"], r["norm"], r["summary_loss"], str(r["seeds"]), *(_pm(r, m) for m in ranked),
                 *(_fmt(r[f"rank {c}"]) for c in cats), _fmt(r["avg_rank"])]
        lines.append("| " + " | ".join(cells) + " |")
    close = [(m, within_one_std(variants, m)) for m in ranked]
    close = [(m, ps) for m, ps in close if ps]
    if max(seeds) < 2:
        lines += ["", "One seed per variant: the spread over seeds is unknown, so no difference above can be "
                      "told apart from seed noise."]
    elif close:
        lines += ["", "**Within one std** (mean difference below the larger std of the two; their order on "
                      "that metric is not resolved by these seeds):"]
        lines += [f"- `{m}`: " + ", ".join(f"{a} ~ {b}" for a, b in ps) for m, ps in close]
    else:
        lines += ["", "No two variants are within one std of each other on any ranked metric."]
    if ranking.reported:
        cols2 = ["variant", *ranking.reported]
        lines += ["", "Reported, not ranked (as in the paper: summary MSE and the other diagnostics):", "",
                  "| " + " | ".join(cols2) + " |", "|" + "---|" * len(cols2)]
        lines += ["| " + " | ".join([r["variant"], *(_pm(r, m) for m in ranking.reported)]) + " |" for r in rows]
    if ranking.unranked:
        lines += ["", "**Not ranked** (missing from some variants, so left out of the table and the ranks):"]
        lines += [f"- `{m}`: missing from {', '.join(vs)}" for m, vs in ranking.unranked.items()]
    return lines + summary_loss_lines(variants, ranking.zeroshot_teacher)


def summary_loss_lines(variants: list[Variant], zeroshot_teacher: str | None) -> list[str]:
    """When the sweep trained its norms under several summary losses (cosine on raw summaries, or the
    variant's own): the norms ranked within each summary loss alone, and whether their order changes."""
    losses = sorted({v.summary_loss for v in variants})
    if len(losses) < 2:
        return []
    orders: dict[str, list[str]] = {}
    for loss in losses:
        group = [v for v in variants if v.summary_loss == loss]
        ranks = rank_variants(group, zeroshot_teacher).ranks
        orders[loss] = [v.norm for v in sorted(group, key=lambda v: (ranks[v.name][AVG], v.norm))]
    common = set.intersection(*(set(o) for o in orders.values()))
    same = len({tuple(n for n in o if n in common) for o in orders.values()}) == 1
    lines = ["", "### Summary loss", "",
             "Each summary loss's variants ranked among themselves (same categories), best first:", ""]
    lines += [f"- `{loss}` summaries: " + " > ".join(orders[loss]) for loss in losses]
    lines += ["", "The order of the normalizations is **the same** under every summary loss." if same else
              "**The order of the normalizations changes with the summary loss**: which summary loss the "
              "sweep uses is part of its answer."]
    return lines


def _groups_lines(groups: list[RankedGroup]) -> list[str]:
    """The ranking section(s): one ranking, or one per group of comparable runs with what it shares."""
    if len(groups) == 1 and groups[0].label is None:
        g = groups[0]
        return _ranking_lines(g.rows, g.ranking, g.variants)
    lines = ["## Rankings by group", "",
             f"The runs are not all comparable, so they are ranked in {len(groups)} separate groups: a variant is "
             "ranked only against the variants of its own group, and ranks of different groups are not "
             "comparable with each other."]
    for i, g in enumerate(groups, 1):
        runs = ", ".join(r for v in g.variants for r in v.runs)
        lines += ["", *_ranking_lines(g.rows, g.ranking, g.variants,
                                      title=f"## Ranking, group {i} of {len(groups)}: {g.label}"),
                  "", f"Runs of group {i}: {runs}."]
    return lines


def _markdown(groups: list[RankedGroup], cost: SweepCost,
              plot_names: list[str], fidelity: list[str], clipping: list[str], context: dict[str, list[str]]) -> str:
    variants = [v for g in groups for v in g.variants]
    lines = ["# Normalization sweep report", "",
             "Teacher-matching MSE is measured in each teacher's own space (after the inverse normalization),",
             "on the held-out split; probe accuracy is kNN (cosine, τ = 0.07) on student summary features.", "",
             *context["runs"], "", *context["recipe"], *context["reading"], "",
             *_groups_lines(groups), "", *context["normalized"], "", *clipping, "",
             *context["teachers"], "", *context["bench"],
             "## Storage fidelity", "", *fidelity]
    runs = sum(len(v.runs) for v in variants)
    lines += ["", "## Cost", "",
              f"Teacher forward passes done into the store (one per teacher per image·view): "
              f"**{cost.store_total:,}** ({', '.join(f'{t}: {n:,}' for t, n in cost.store_passes.items())}).",
              f"The same {runs}-run sweep online (runs × steps × batch per teacher): "
              f"**{cost.online_total:,}** ({', '.join(f'{t}: {n:,}' for t, n in cost.online_passes.items())}); "
              f"ratio online / store = **{cost.ratio:.1f}×**.", *context["time"], "", "## Figures", ""]
    lines += [f"![{name}]({name})" for name in plot_names]
    return "\n".join(lines) + "\n"


def write_report(run_dirs: Sequence[Path], out_dir: Path, *, store_root: Path | None = None,
                 allow_stale: bool = False, allow_unfinished: bool = True, allow_incomparable: bool = False,
                 by_group: bool = False, dvc_out: Path | None = None) -> Path:
    """Write report.md, report.csv and PNG plots for the given evaluated runs; returns report.md's path.

    Runs that differ only in their seed are one variant (mean ± std over seeds). ``store_root``
    defaults to the store root recorded in the runs' config.json (which must agree). Stale evaluations
    and incomparable runs (``stages.evaluate.comparability``) are refused with ValueError unless allowed
    (``by_group``: each group of comparable runs ranked on its own); unfinished runs are marked (refused when
    ``allow_unfinished`` is False). ``dvc_out``: also write the ranks and ranked means as a DVC metrics
    file (``stages.evaluate.dvc_ranking.write_ranking``).
    """
    run_dirs = [Path(r) for r in run_dirs]
    names = [r.name for r in run_dirs]
    if not run_dirs or len(set(names)) != len(names):
        raise ValueError(f"need one or more run directories with distinct names, got {names}")
    evals = {r.name: read_eval(r) for r in run_dirs}
    configs = {r.name: read_config_json(r) for r in run_dirs}
    facts: list[RunFacts] = [run_facts(r, evals[r.name], configs[r.name]) for r in run_dirs]
    notes = check_runs(facts, allow_stale=allow_stale, allow_unfinished=allow_unfinished,
                       allow_incomparable=allow_incomparable, by_group=by_group)
    if store_root is None:
        roots = {str(config_field(c, "root", n)) for n, c in configs.items()}
        if len(roots) != 1:
            raise ValueError(f"runs come from different stores {sorted(roots)}; pass store_root explicitly")
        store_root = Path(roots.pop())
    teachers = sorted({t for n, c in configs.items() for t in config_field(c, "teachers", n)})
    passes, covs, teacher_var = _store_facts(Path(store_root), teachers)
    cost = sweep_cost(configs, passes, steps_done={f.run: f.steps_done for f in facts})
    groups = rank_groups(evals, configs, facts, by_group=by_group)
    variants = [v for g in groups for v in g.variants]
    fidelity = fidelity_report_lines(Path(store_root), teachers, variants)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = {run: {m.rsplit("/", 1)[0]: v for m, v in flatten_metrics(ev).items() if m.endswith("/mse")}
              for run, ev in evals.items()}
    plots.plot_teacher_errors(errors, out_dir / PLOT_ERRORS)
    plots.plot_spectra(covs, out_dir / PLOT_SPECTRA)
    histories = {r.name: read_history(r) for r in run_dirs}
    plots.plot_loss_curves(histories, out_dir / PLOT_LOSS)
    plot_names = [PLOT_ERRORS, PLOT_SPECTRA, PLOT_LOSS]
    probe = {run: {k: float(ev["probe"][k]) for k in ("knn_acc", "linear_acc") if ev["probe"].get(k) is not None}
             for run, ev in evals.items() if ev.get("probe")}
    if any(probe.values()):
        plots.plot_probe_accuracy(probe, out_dir / PLOT_PROBE)
        plot_names.append(PLOT_PROBE)
    ranked = sorted({m for g in groups for ms in g.ranking.categories.values() for m in ms}
                    | {m for g in groups for m in g.ranking.reported})
    context = {"runs": report_context.runs_lines(facts, notes, histories),
               "reading": report_context.reading_lines(ranked, higher_is_better(ranked),
                                                       report_context.probe_feature_line(evals)),
               "normalized": report_context.normalized_error_lines(evals, teacher_var),
               "time": report_context.time_cost_lines(facts, histories),
               "teachers": teacher_table.teacher_lines(Path(store_root), teachers, variants, configs),
               "recipe": recipe_lines(configs, evals),
               "bench": bench_protocol_lines(evals)}

    rows = [{**({"group": i} if len(groups) > 1 else {}), **r} for i, g in enumerate(groups, 1) for r in g.rows]
    with open(out_dir / REPORT_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        writer.writeheader()
        writer.writerows(rows)
    if dvc_out is not None:
        from stages.evaluate.dvc_ranking import write_ranking

        write_ranking(dvc_out, groups)
    md_path = out_dir / REPORT_MD
    md_path.write_text(_markdown(groups, cost, plot_names, fidelity,
                                 clip_lines(variants, configs, histories), context))
    (out_dir / "cost.json").write_text(json.dumps(
        {"store_passes": cost.store_passes, "online_passes": cost.online_passes,
         "store_total": cost.store_total, "online_total": cost.online_total, "ratio": cost.ratio}, indent=2))
    return md_path
