"""Stage two of offline agglomerative distillation (AM-RADIO arXiv 2312.06709) with PHI-S target
normalization (arXiv 2410.01680): store-fed loader, training loop, checkpoints, export, run loading.

Never imports stages.teachers model code: everything stage two needs is in the stores. Import the
submodules directly (`from stages.distill.train import train`).
"""
