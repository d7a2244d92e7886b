"""The report's "Student recipe" section (AM-RADIO arXiv 2312.06709, PHI-S arXiv 2410.01680): per run, the
resolution partitions it trained (student side, batch, stores), where the student's weights started, how a
partition's batch is shared among its teachers, the student options; and, for a multi-resolution student,
the cross-resolution consistency of its adaptors (stages/evaluate/resolutions.py). Runs that recorded none of
these (single-resolution, random init, shared batches, no options: every run before them) get no section.
"""

from __future__ import annotations

from typing import Any, Mapping

_OPTIONS = ("cpe_grid", "window_size", "grad_checkpointing", "torch_compile")


def _is_default(cfg: Mapping[str, Any]) -> bool:
    return (len(cfg.get("partitions") or []) <= 1 and cfg.get("student_weights", "random") == "random"
            and cfg.get("teacher_batches", "shared") == "shared" and not any(cfg.get(k) not in (None, 0, False, "eager")
                                                                            for k in _OPTIONS))


def recipe_lines(configs: Mapping[str, Mapping[str, Any]], evals: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown lines (empty when every run is a plain single-resolution run from random weights)."""
    if all(_is_default(cfg) for cfg in configs.values()):
        return []
    lines = ["## Student recipe", "",
             "| run | partitions (side px : batch : stores) | student init | teacher batches | options |",
             "|---|---|---|---|---|"]
    for run, cfg in configs.items():
        parts = "; ".join(f"{p['img_size']}:{p['batch_size']}:{','.join(p['teachers'])}"
                          for p in cfg.get("partitions") or [])
        init = cfg.get("student_init") or {"source": cfg.get("student_weights", "random")}
        init_text = init["source"] + (f" {init['id']}" if init.get("id") and init["source"] != "random" else "")
        if init.get("sha256"):
            init_text += f" (sha256 {init['sha256'][:12]}…)"
        opts = ", ".join(f"{k} {cfg[k]}" for k in _OPTIONS if cfg.get(k) not in (None, 0, False, "eager")) or "none"
        lines.append(f"| {run} | {parts or 'n/a'} | {init_text} | {cfg.get('teacher_batches', 'shared')} | {opts} |")
    for run, ev in evals.items():
        res = ev.get("resolutions")
        if not res:
            continue
        lines += ["", f"Per resolution, run {run} (sides {res['sizes']}, not trained at {res['untrained']}): mean "
                      "token cosine of each adaptor's teacher-space output between neighbouring sides "
                      "(1 = the same output at both; a student that switches modes drops here):", "",
                  "| sides | " + " | ".join(f"{t} {k}" for t, kinds in next(iter(res["consistency"].values())).items()
                                             for k in kinds) + " |"]
        first = next(iter(res["consistency"].values()))
        lines.append("|---|" + "---|" * sum(len(k) for k in first.values()))
        for pair, stores in res["consistency"].items():
            lines.append(f"| {pair} | " + " | ".join(f"{v:.3f}" for kinds in stores.values() for v in kinds.values())
                         + " |")
    return lines + [""]
