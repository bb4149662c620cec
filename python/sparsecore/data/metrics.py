"""Evaluation metrics (compiled, exact): AUC with ties, GAUC, logloss."""

from __future__ import annotations

import numpy as np

from .._core import io as _io

__all__ = ["auc", "gauc", "logloss"]


def _vector(x, name: str, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (or [n, 1]), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def auc(labels, scores) -> float:
    """Area under the ROC curve; tied scores count one half. Labels must be 0 or 1.
    Returns NaN when only one class is present (sklearn raises instead)."""
    return _io.auc(_vector(labels, "labels"), _vector(scores, "scores"))


def gauc(labels, scores, users) -> float:
    """Group AUC: per-user AUC averaged with weights = the user's sample count; users whose
    samples all have one label are skipped. NaN when none qualifies."""
    return _io.gauc(_vector(labels, "labels"), _vector(scores, "scores"), _vector(users, "users", np.int64))


def logloss(labels, probabilities, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps]."""
    return _io.logloss(_vector(labels, "labels"), _vector(probabilities, "probabilities"), eps)
