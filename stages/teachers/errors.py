"""Errors raised when a teacher's weights cannot be provided.

DESIGN §4 (real teachers without the internet): a teacher whose pretrained weights are not available
fails with a message saying which weights, where it looked, and how to provide them; nothing falls back
to random weights silently.
"""

from __future__ import annotations


class MissingWeightsError(RuntimeError):
    """Pretrained weights are not on this machine.

    Attributes:
        weights: what was asked for (library, model name and tag, or a checkpoint path).
        looked_in: where the loader looked (Hugging Face hub cache directory and file names, or a path).
        how: how to provide the weights.
    """

    def __init__(self, *, teacher: str, weights: str, looked_in: str, how: str, role: str = "teacher") -> None:
        self.teacher = teacher  # the model's name (a teacher's, or a student's when role is "student")
        self.weights = weights
        self.looked_in = looked_in
        self.how = how
        super().__init__(
            f"Pretrained weights for {role} {teacher!r} are not available: {weights}. "
            f"Looked in: {looked_in}. To provide them: {how}"
        )


def check_spec_matches_model(spec_name: str, what: str, spec_value: object, model_value: object) -> None:
    """Raise ValueError when a TeacherSpec field disagrees with the model code it describes."""
    if spec_value != model_value:
        raise ValueError(
            f"teacher {spec_name!r}: spec says {what} = {spec_value!r} but the model has {model_value!r}; "
            "fix the registry entry")
