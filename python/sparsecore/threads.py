"""How the cores are shared between torch's intra-op pool and sparsecore's compute pool.

Left alone, both pools size themselves to every core, and in a training loop they run at the
same time (the Trainer prepares batch k+1 while the dense step of batch k runs; torch's OpenMP
workers spin for a while after each parallel region): twice as many busy threads as cores,
which can make a step many times slower. So the :class:`~sparsecore.Trainer` and
:class:`~sparsecore.torch.EmbeddingBagCollection` apply a split when they are built:

    torch threads      = max(1, cores // 2)
    sparsecore threads = max(1, cores - torch threads)

where ``cores`` is the number of CPUs this process may run on (``os.sched_getaffinity``).
The split is applied at most once per process and never overrides a choice already made:

- after :func:`sparsecore.set_num_threads` (or :func:`configure_threads`), nothing changes;
- with ``OMP_NUM_THREADS`` set, torch's count is left as is and sparsecore takes the rest;
- ``SPARSECORE_THREADS=keep`` in the environment (or ``threads=None`` on the Trainer or the
  bridge) turns the automatic split off.

Results do not depend on either count (sums are reduced in a fixed order).
"""

from __future__ import annotations

import os
import threading
from typing import Optional, Union

from . import _core

__all__ = ["ThreadsSpec", "available_cores", "configure_threads", "default_split", "apply_default_split"]

ThreadsSpec = Union[str, None, tuple[int, int]]

_lock = threading.Lock()
_state = {"explicit": False, "applied": False}


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask; cgroup quotas are not read)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_split(cores: Optional[int] = None) -> tuple[int, int]:
    """(torch threads, sparsecore threads) for ``cores`` CPUs (default: :func:`available_cores`)."""
    n = available_cores() if cores is None else int(cores)
    if n < 1:
        raise ValueError(f"cores must be >= 1, got {n}")
    torch_threads = max(1, n // 2)
    return torch_threads, max(1, n - torch_threads)


def mark_explicit() -> None:
    """Records that the user chose sparsecore's thread count: no automatic split follows."""
    with _lock:
        _state["explicit"] = True


def configure_threads(torch_threads: Optional[int] = None, sparse_threads: Optional[int] = None) -> tuple[int, int]:
    """Sets torch's intra-op threads and sparsecore's compute threads (None: keep that one);
    returns the counts now in effect. Turns the automatic split off."""
    for name, value in (("torch_threads", torch_threads), ("sparse_threads", sparse_threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    import torch

    with _lock:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        if sparse_threads is not None:
            _core.set_num_threads(sparse_threads)
        _state["explicit"] = True
    return torch.get_num_threads(), _core.num_threads()


def apply_default_split(spec: ThreadsSpec = "auto") -> Optional[tuple[int, int]]:
    """What the Trainer and the torch bridge call when built. ``spec``: ``"auto"`` (the split
    above, once, unless a choice was made), ``None`` (change nothing) or ``(torch, sparse)``
    (set both). Returns the counts it set, or None when it changed nothing."""
    if spec is None:
        return None
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError(f"threads must be 'auto', None or (torch_threads, sparse_threads), got {spec!r}")
        return configure_threads(*spec)
    if spec != "auto":
        raise ValueError(f"threads must be 'auto', None or (torch_threads, sparse_threads), got {spec!r}")
    if os.environ.get("SPARSECORE_THREADS", "").strip().lower() == "keep":
        return None
    import torch

    with _lock:
        if _state["explicit"] or _state["applied"]:
            return None
        _state["applied"] = True
        cores = available_cores()
        if os.environ.get("OMP_NUM_THREADS"):
            torch_threads = torch.get_num_threads()  # the user's choice for torch
            sparse_threads = max(1, cores - torch_threads)
        else:
            torch_threads, sparse_threads = default_split(cores)
            torch.set_num_threads(torch_threads)
        _core.set_num_threads(sparse_threads)
    return torch_threads, sparse_threads


def _reset_for_tests() -> None:
    with _lock:
        _state["explicit"] = False
        _state["applied"] = False
