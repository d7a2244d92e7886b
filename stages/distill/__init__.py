"""Stage two of offline agglomerative distillation (AM-RADIO arXiv 2312.06709) with PHI-S target
normalization (arXiv 2410.01680): store-fed loader, training loop, checkpoints, export, run loading.

Never imports stages.teachers model code: everything stage two needs is in the stores. Import the
submodules directly (`from stages.distill.train import train`).
"""


def load_exported(path, **kwargs):  # noqa: ANN001, ANN201 - see stages.distill.exported.load_exported
    """The exported student as a backbone with teacher-space adaptors (`stages.distill.exported`)."""
    from stages.distill.exported import load_exported as _load

    return _load(path, **kwargs)
