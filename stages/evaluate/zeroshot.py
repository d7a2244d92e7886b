"""Zero-shot classification through a CLIP teacher's text embeddings (CLIP, Radford et al.,
arXiv 2103.00020; the PHI-S ranking's Classification category, arXiv 2410.01680, and AM-RADIO's claim
that the student keeps its teachers' zero-shot ability, arXiv 2312.06709).

An image embedding in the teacher's joint space (the teacher's stored summary, or the student's summary
adaptor for that teacher, in teacher space) is assigned the class whose L2-normalized text embedding has
the largest cosine. Reported: the student's top-1 accuracy, the teacher's own top-1 from its stored
summaries (the reference), and agreement: the fraction of images on which student and teacher predict the
same class, which is meaningful even for random-weight teachers.

Shape legend: N images, C joint width, L classes.
"""

from __future__ import annotations

import numpy as np


def zeroshot_predict(emb_NC: np.ndarray, text_LC: np.ndarray) -> np.ndarray:
    """Class index [N] of largest cosine between each embedding and each class text embedding."""
    emb_NC, text_LC = np.asarray(emb_NC, np.float64), np.asarray(text_LC, np.float64)
    if emb_NC.ndim != 2 or text_LC.ndim != 2 or emb_NC.shape[1] != text_LC.shape[1]:
        raise ValueError(f"need [N, C] embeddings and [L, C] text embeddings, got {emb_NC.shape}, {text_LC.shape}")
    emb_NC = emb_NC / np.maximum(np.linalg.norm(emb_NC, axis=1, keepdims=True), 1e-12)
    text_LC = text_LC / np.maximum(np.linalg.norm(text_LC, axis=1, keepdims=True), 1e-12)
    return np.argmax(emb_NC @ text_LC.T, axis=1)


def zeroshot_scores(student_NC: np.ndarray, teacher_NC: np.ndarray, text_LC: np.ndarray,
                    labels_N: np.ndarray) -> dict[str, float]:
    """{top1, teacher_top1, agreement} for class-index labels [N]."""
    labels_N = np.asarray(labels_N)
    if len(labels_N) == 0 or len(student_NC) != len(labels_N) or len(teacher_NC) != len(labels_N):
        raise ValueError(f"need equally many student ({len(student_NC)}), teacher ({len(teacher_NC)}) embeddings "
                         f"and labels ({len(labels_N)}), at least one")
    s_N, t_N = zeroshot_predict(student_NC, text_LC), zeroshot_predict(teacher_NC, text_LC)
    return {"top1": float(np.mean(s_N == labels_N)), "teacher_top1": float(np.mean(t_N == labels_N)),
            "agreement": float(np.mean(s_N == t_N))}
