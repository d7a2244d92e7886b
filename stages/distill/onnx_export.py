"""The exported student as an ONNX graph (AM-RADIO, arXiv 2312.06709: backbone + one adaptor per teacher; PHI-S,
arXiv 2410.01680: the adaptors' outputs in each teacher's own space, denormalization folded in).

`write_onnx(model, path)` traces `stages.distill.exported.ExportedStudent` with torch.onnx's dynamo exporter
(the TorchScript exporter cannot export the heads' adaptive average pooling with a dynamic batch) into one
graph with input `pixels` [batch, 3, S, S] (S = the export's input size; normalized as its preprocessing
record says) and flat outputs, batch dimension dynamic:

    backbone_summary    [batch, K, C]      the student's summary tokens
    backbone_features   [batch, h, w, C]   its dense features (stride 16)
    <teacher>.summary   [batch, C_t]       per adaptor with a summary, in the teacher's space
    <teacher>.features  [batch, h_t, w_t, C_t]

The graph's metadata carries what `export.safetensors` carries (`preprocessing`, `config`, `outputs`,
`adaptor_names`). `check_onnx` runs the written file under onnxruntime at other batch sizes than the trace's
and returns the largest deviation from PyTorch. Needs the `[onnx]` extra (onnx, onnxscript, onnxruntime).

Shape legend: B batch, K summary tokens, C channels, S input side, h/w grid sides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.distill.exported import ExportedStudent
from stages.optional import require

ONNX_OPSET = 18
TRACE_BATCH = 2  # the example batch of the trace; check_onnx runs other sizes to prove the batch is dynamic
ONNX_TOLERANCE = 1e-4  # |onnx - torch| <= tol * (1 + |torch|) per element: absolute near 0, relative on SAM's x8 scale


class FlatOutputs(nn.Module):
    """ExportedStudent with its outputs as one flat tuple, in `output_names(model)` order (ONNX has no
    dataclasses)."""

    def __init__(self, model: ExportedStudent) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels_BCHW: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(pixels_BCHW)
        flat = [out.backbone_summary_BKC, out.backbone_features_BhwC]
        for name in self.model.adaptor_names:
            adaptor = out.adaptors[name]
            if adaptor.summary_BC is not None:
                flat.append(adaptor.summary_BC)
            flat.append(adaptor.features_BhwC)
        return tuple(flat)


def output_names(model: ExportedStudent) -> list[str]:
    """The graph's output names, in FlatOutputs order."""
    names = ["backbone_summary", "backbone_features"]
    for name in model.adaptor_names:
        if name in model.heads.summary_heads:
            names.append(f"{name}.summary")
        names.append(f"{name}.features")
    return names


def _pixels(model: ExportedStudent, batch: int, seed: int) -> torch.Tensor:
    """Normalized pixels of random uint8 images at the model's input size."""
    rng = np.random.default_rng(seed)
    return model.pixels(rng.integers(0, 256, (batch, model.img_size, model.img_size, 3), dtype=np.uint8))


def write_onnx(model: ExportedStudent, path: Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Export `model` (eval mode, CPU) to `path` with a dynamic batch dimension; returns path. Weights past
    protobuf's 2 GB go to `<path>.data` beside it (torch.onnx's external data)."""
    require("onnxscript", extra="onnx", purpose="ONNX export (torch.onnx's dynamo exporter)")
    require("onnx", extra="onnx", purpose="ONNX export")
    flat = FlatOutputs(model).eval()
    names = output_names(model)
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        program = torch.onnx.export(flat, (_pixels(model, TRACE_BATCH, 0),), input_names=["pixels"],
                                    output_names=names, dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET,
                                    dynamo=True, verbose=False)
    props = {"adaptor_names": json.dumps(model.adaptor_names), "outputs": "teacher_space",
             "preprocessing": json.dumps(model.preprocessing, sort_keys=True), **(metadata or {})}
    program.model.metadata_props.update(props)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on random images: the batch sizes run and, per output, the largest
    |onnx - torch| / (1 + |torch|)."""

    batches: tuple[int, ...]
    deviation: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.deviation.values())


def check_onnx(model: ExportedStudent, path: Path, *, batches: tuple[int, ...] = (1, 3)) -> OnnxCheck:
    """Run `path` under onnxruntime (CPU) at `batches` and compare every output with `model`'s."""
    ort = require("onnxruntime", extra="onnx", purpose="checking the ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = output_names(model)
    flat = FlatOutputs(model).eval()
    deviation = dict.fromkeys(names, 0.0)
    for i, b in enumerate(batches):
        x_BCHW = _pixels(model, b, seed=1 + i)
        with torch.no_grad():
            want = [t.numpy() for t in flat(x_BCHW)]
        got = session.run(names, {"pixels": x_BCHW.numpy()})
        for name, g, w in zip(names, got, want):
            if g.shape != w.shape:
                raise ValueError(f"{path}: output {name} has shape {g.shape} at batch {b}, PyTorch gives {w.shape}")
            deviation[name] = max(deviation[name], float(np.max(np.abs(g - w) / (1.0 + np.abs(w)))))
    return OnnxCheck(tuple(batches), deviation)
