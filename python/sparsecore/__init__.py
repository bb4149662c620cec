"""sparsecore: hash-table embeddings, fused sparse optimizers and a parameter server."""

from __future__ import annotations

from . import _core
from ._core import CorruptDataError, cpu_features, num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "CorruptDataError",
    "cpu_features",
    "num_threads",
    "set_num_threads",
]
