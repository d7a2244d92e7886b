"""The report says what it compares (issue 26 item 4): runs of other steps, students, teachers or corpora are
refused as one ranking or ranked only within their groups; runs made by hand are added explicitly and named
when left out; fidelity verdicts, normalized errors and training times carry their reading in the report."""

import csv
import json

import pytest

from stages.evaluate.report import write_report
from test_report import _eval, _run_dir, _tiny_store


def _store(tmp_path):
    root = tmp_path / "store"
    _tiny_store(root, "ta", summary_dim=4, patch_dim=8, scale=0.01)
    _tiny_store(root, "tb", summary_dim=0, patch_dim=4, scale=5.0)
    return root


def _with(run, **fields):
    """Rewrite fields of a hand-built run's config.json (and its eval's fingerprint to match)."""
    from stages.distill.run import run_fingerprint

    cfg = {**json.loads((run / "config.json").read_text()), **fields}
    (run / "config.json").write_text(json.dumps(cfg))
    ev = json.loads((run / "eval" / "metrics.json").read_text())
    (run / "eval" / "metrics.json").write_text(json.dumps({**ev, "run_fingerprint": run_fingerprint(cfg)}))
    return run


def test_a_short_run_is_not_ranked_against_the_sweep(tmp_path):
    """The issue's case: a 20-step run beside 200-step runs, with better numbers, is refused as one ranking;
    --by-group ranks each group alone, says why and what each group shares."""
    root = _store(tmp_path)
    t1 = _run_dir(tmp_path, root, "t1", _eval("phis", 0.5, 0.5, 1.0), steps=20)  # "best" only because it differs
    s0 = _with(_run_dir(tmp_path, root, "phis-seed0", _eval("phis", 1.0, 2.0, 0.9), steps=200), seed=0)
    s1 = _with(_run_dir(tmp_path, root, "mse-seed0", _eval("mse", 3.0, 3.0, 0.5), steps=200), seed=0)
    with pytest.raises(ValueError, match=r"not comparable \(training steps differ: 20 -> \['t1'\]; "
                                         r"200 -> \['phis-seed0', 'mse-seed0'\]\); pass --by-group"):
        write_report([t1, s0, s1], tmp_path / "rep")
    text = write_report([t1, s0, s1], tmp_path / "rep", by_group=True).read_text()
    assert "## Rankings by group" in text and "ranked in 2 separate groups" in text
    assert "## Ranking, group 1 of 2: student tiny, 20 steps, teachers ta, tb" in text
    assert "## Ranking, group 2 of 2: student tiny, 200 steps, teachers ta, tb" in text
    assert "Runs of group 1: t1." in text and "Runs of group 2: phis-seed0, mse-seed0." in text
    assert "each group of comparable runs is ranked on its own" in text
    with open(tmp_path / "rep" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    # t1 ranks 1 in its own group of one; in the 200-step group phis beats mse; names are unique over groups
    assert [(r["group"], r["variant"], float(r["avg_rank"])) for r in rows] == [
        ("1", "t1", 1.0), ("2", "phis-seed0", 1.0), ("2", "mse", 2.0)]
    # comparable runs: one ranking, no group column
    text = write_report([s0, s1], tmp_path / "rep2").read_text()
    assert "## Ranking\n" in text and "Rankings by group" not in text
    with open(tmp_path / "rep2" / "report.csv") as f:
        assert "group" not in next(csv.DictReader(f))


@pytest.mark.parametrize("field, value, label", [("student", "vit_small", "students"),
                                                  ("manifest_hash", "n" * 64, "corpora \\(manifests\\)")])
def test_other_students_or_corpora_are_refused(tmp_path, field, value, label):
    root = _store(tmp_path)
    a = _run_dir(tmp_path, root, "a", _eval("phis", 1.0, 2.0, 0.9))
    b = _with(_run_dir(tmp_path, root, "b", _eval("mse", 3.0, 3.0, 0.5)), **{field: value})
    with pytest.raises(ValueError, match=rf"not comparable \({label} differ: .*--allow-incomparable"):
        write_report([a, b], tmp_path / "rep")
    text = write_report([a, b], tmp_path / "rep", allow_incomparable=True).read_text()
    assert "ranked together anyway (--allow-incomparable)" in text


def test_report_cli_adds_runs_made_by_hand_and_names_those_left_out(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    root = _store(tmp_path)
    a = _run_dir(tmp_path, root, "phis-seed0", _eval("phis", 1.0, 2.0, 0.9))
    b = _run_dir(tmp_path, root, "mse-seed0", _eval("mse", 3.0, 3.0, 0.5))
    hand = _run_dir(tmp_path, root, "t1", _eval("zca", 2.0, 1.0, 0.5))
    res = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert f"not in this report: {hand} (evaluated beside its runs; add it with --add {hand})" in res.output
    res = CliRunner().invoke(app, ["report", str(a), str(b), "--add", str(hand), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "not in this report" not in res.output and "| t1 | zca |" in (tmp_path / "rep" / "report.md").read_text()
    _with(hand, steps=3, out_dir=str(hand))  # now a run of other steps: one Error line naming the difference
    refused = tmp_path / "refused"
    res = CliRunner().invoke(app, ["report", str(a), str(b), "--add", str(hand), "--out", str(refused),
                                   "--dvc-out", str(tmp_path / "ranking.json")])
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert res.output.strip().splitlines()[-1] == errors[0], res.output  # the last word
    assert "training steps differ: 10 -> ['phis-seed0', 'mse-seed0']; 3 -> ['t1']" in errors[0], errors[0]
    assert "--by-group" in errors[0] and "--allow-incomparable" in errors[0]
    assert not refused.exists() and not (tmp_path / "ranking.json").exists()  # nothing left behind
    (tmp_path / "a_file").write_text("")  # a --dvc-out that cannot be written: refused before the report is
    res = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(refused),
                                   "--dvc-out", str(tmp_path / "a_file" / "ranking.json")])
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "writing the DVC ranking file failed" in errors[0], res.output
    assert not refused.exists()
    res = CliRunner().invoke(app, ["report", str(a), str(b), "--add", str(hand), "--by-group", "--out",
                                   str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output


def test_fidelity_verdicts_are_explained_in_the_report():
    from stages.evaluate.report import fidelity_reading_lines

    text = "\n".join(fidelity_reading_lines({"phis": ["ta/patches"], "mse": ["ta/patches"]}, {"ta/patches"}))
    assert "**FAIL** means the student of that variant partly trains on rounding noise" in text
    assert "more kept bits at extraction, or its noise-floored `_nf` variant" in text
    assert "Raw targets fail too (ta/patches" in text and "`pipeline store fidelity`" in text
    assert "Raw targets" not in "\n".join(fidelity_reading_lines({"zca": ["ta/patches"]}, set()))
    assert "Every variant passes" in "\n".join(fidelity_reading_lines({}, set()))
    assert "Every variant passes" not in "\n".join(fidelity_reading_lines({}, set(), measured=False))


def test_normalized_errors_and_training_times_carry_their_definitions(tmp_path):
    from stages.evaluate.report_context import normalized_error_lines, step_timing, time_cost_lines

    ev = {"summary_loss": "cosine", "teachers": {"ta": {"summary": {"mse": 1460.0}, "patches": {"mse": 0.5}},
                                                 "tb": {"patches": {"mse": 9.0}}}}
    text = "\n".join(normalized_error_lines({"r": ev}, {"ta": {"summary": 1.0, "patches": 1.0},
                                                        "tb": {"patches": 3.0}}))
    assert "normalized error = MSE / (mean per-channel variance" in text and "1.0 is as bad" in text
    assert "cosine summary loss" in text and "(up to 1.46e+03)" in text and "read the summary's `cos_mean`" in text
    assert "worse than predicting the teacher's mean output) for: r tb/patches (3)" in text
    # a run whose first logged interval (warm-up) is 40 s, then 10 steps per 1 s
    hist = [{"step": 10, "elapsed_s": 41.0}, {"step": 20, "elapsed_s": 42.0}, {"step": 30, "elapsed_s": 43.0}]
    assert step_timing(hist) == pytest.approx((0.1, 40.0))
    fast = [{"step": 10, "elapsed_s": 1.0}, {"step": 20, "elapsed_s": 2.0}, {"step": 30, "elapsed_s": 3.0}]
    text = "\n".join(time_cost_lines(_facts(["slow", "fast"]), {"slow": hist, "fast": fast}))
    assert "Training time = wall clock of the training loop" in text and "loader's warm-up" in text
    assert "slow: 100 ms / 40 s; fast: 100 ms / 0 s" in text
    assert "Mostly warm-up (more than half of the run's time): slow;" in text


def _facts(names):
    from stages.evaluate.comparability import RunFacts

    return [RunFacts(run=n, norm="phis", student="s", steps=30, steps_done=30, seed=0, teachers=("ta",),
                     manifest_hash="m", split="val", num_samples=4, stale=False, finished=True) for n in names]
