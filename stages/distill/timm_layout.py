"""A ViT student's trunk in timm's own layout, for timm users (AM-RADIO, arXiv 2312.06709: the trunk of an
agglomerative student is a plain ViT; its K summary tokens are timm's CLS + K-1 register tokens).

`write_timm_trunk(model, out_dir)` writes `model.safetensors` + `config.json` with timm's own `save_for_hf`
(what `timm.models.push_to_hf_hub` uploads): the architecture name, the constructor arguments the student was
built with (`model_args`: img_size, reg_tokens, dynamic_img_size, and any size overrides) and a
`pretrained_cfg` carrying the export's preprocessing (mean, std, input size, interpolation). Either of

    timm.create_model("local-dir:RUN/timm", pretrained=True)
    timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file="RUN/timm/model.safetensors"),
                      **config["model_args"])

then builds the trunk with these weights; `forward_features(x)` gives the student's tokens (the first K are
its summary tokens, the rest its patch features). The teacher adaptors are not timm modules: they stay in
export.safetensors / the ONNX graph. E-RADIO students have no timm architecture and get no timm layout.
"""

from __future__ import annotations

from pathlib import Path

from stages.distill.exported import ExportedStudent
from stages.students.vit import ViTStudent

TIMM_TAG = "agglo_distill"  # pretrained_cfg tag: these are not the architecture's published weights


def has_timm_trunk(model: ExportedStudent) -> bool:
    """Whether the student's trunk is a timm model (ViT students, registered or `timm:<name>`)."""
    return isinstance(model.student, ViTStudent)


def write_timm_trunk(model: ExportedStudent, out_dir: Path) -> Path:
    """Write out_dir/{model.safetensors, config.json} as timm's save_for_hf does; returns out_dir."""
    if not has_timm_trunk(model):
        raise ValueError(f"student {model.config.student!r} is not built from a timm architecture; only ViT "
                         "students have a timm layout (use export.safetensors or the ONNX graph)")
    from timm.models import save_for_hf

    prep = model.preprocessing
    data_config = {"mean": tuple(prep["mean"]), "std": tuple(prep["std"]),
                   "input_size": (3, model.img_size, model.img_size), "interpolation": model.interpolation,
                   "crop_pct": 1.0}  # the student saw whole views resized to the input size, no center crop
    model_config = {"pretrained_cfg": {"tag": TIMM_TAG, "license": None,
                                       "notes": ("trunk of an agglomerative student (agglo-distill); the first "
                                                 f"{model.student.num_summary_tokens} tokens of forward_features "
                                                 "are its summary tokens, its teacher adaptors are in "
                                                 "export.safetensors")}}
    out_dir = Path(out_dir)
    save_for_hf(model.student.model, str(out_dir), model_config=model_config, safe_serialization=True,
                data_config=data_config)
    return out_dir
