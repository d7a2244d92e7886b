"""Stage two never touches a teacher: a training run succeeds in a process where the teacher registry and
families, the extract stage, open_clip and timm's model factory are all unavailable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from test_distill_loader import make_tiny_stores

BLOCKED = ("stages.teachers.registry", "stages.teachers.dinov2", "stages.teachers.sam",
           "stages.teachers.open_clip_family", "stages.teachers.weights", "stages.teachers.preprocess",
           "stages.extract", "open_clip")

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = tuple(json.loads(sys.argv[1]))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"stage two imported teacher code: {name}")
            return None

    sys.meta_path.insert(0, Refuse())
    import timm

    def no_factory(name, *a, **k):
        raise RuntimeError(f"stage two built a timm model: {name}")

    timm.create_model = no_factory
    import torch
    torch.set_num_threads(1)
    from stages.distill.config import DistillConfig
    from stages.distill.train import train
    from stages.distill.run import load_run
    config = DistillConfig(student="eradio_tiny_test", teachers=("alpha", "beta", "gamma"), root=sys.argv[2],
                           out_dir=sys.argv[3], img_size=64, steps=3, batch_size=4, log_every=1, num_workers=1)
    train(config)
    load_run(sys.argv[3])
    leaked = [m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED)]
    assert not leaked, leaked
    print("OK")
""")


def test_training_runs_with_teacher_code_unavailable(tmp_path: Path) -> None:
    root = make_tiny_stores(tmp_path / "store")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), str(root), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_the_guard_does_refuse_teacher_code(tmp_path: Path) -> None:
    """The same guard makes importing the teacher registry fail (so the test above can fail)."""
    guard = SCRIPT.split("import timm")[0] + "import stages.teachers.registry\n"
    proc = subprocess.run([sys.executable, "-c", guard, json.dumps(BLOCKED)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "stage two imported teacher code" in proc.stderr
