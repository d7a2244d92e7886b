"""Evaluation of distilled students (AM-RADIO arXiv 2312.06709; PHI-S arXiv 2410.01680).

metrics.py: teacher-space errors (MSE, token cosine, per-channel error-variance range); knn.py: kNN and
linear probes on summary vectors; evaluate.py: `evaluate_run(run_dir)` → <run>/eval/metrics.json;
ranking.py: average rank across metrics; report.py + plots.py: the sweep report (md, csv, png, cost).
Nothing is imported here, so importing one module does not pull in torch-heavy neighbours.
"""
