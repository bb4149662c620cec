"""Array conversions at the Python boundary: NumPy and CPU torch tensors in (zero-copy where
the dtype already matches), NumPy or torch out. Wrong kinds of data raise TypeError naming
the argument; nothing is silently truncated (floats are never accepted as ids)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(x: Any, what: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if is_torch(x):
        if x.device.type != "cpu":
            raise TypeError(f"{what} is a tensor on '{x.device}'; this collection lives on the CPU")
        return x.detach().numpy()
    if hasattr(x, "__dlpack__"):
        return np.from_dlpack(x)
    return np.asarray(x)


def as_int64(x: Any, what: str) -> np.ndarray:
    """A C-contiguous int64 array; accepts any integer dtype (int32 ids are widened)."""
    a = _to_numpy(x, what)
    if a.dtype != np.int64:
        if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
            raise TypeError(f"{what} must be an integer array (int64), got dtype {a.dtype}")
        if a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
            # uint64 ids keep their bits: the id space is 64-bit either way.
            a = a.view(np.int64)
        else:
            a = a.astype(np.int64)
    return np.ascontiguousarray(a)


def as_float32(x: Any, what: str) -> np.ndarray:
    """A C-contiguous float32 array; only float32 is accepted (no silent precision change)."""
    a = _to_numpy(x, what)
    if a.dtype != np.float32:
        raise TypeError(f"{what} must have dtype float32, got {a.dtype}")
    return np.ascontiguousarray(a)


def to_torch(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(a)
