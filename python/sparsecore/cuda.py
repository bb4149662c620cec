"""CUDA backend: the embedding collection with its rows in GPU memory.

``DeviceEmbeddingCollection`` has the API of :class:`sparsecore.EmbeddingCollection` (it is
one) and the same results up to float rounding: same initial values, same update rules,
same pooling. ``sparsecore.EmbeddingCollection(tables, seed, device="cuda")`` builds one.

``emulate=True`` runs the very same CUDA kernels on the CPU through sparsecore's CUDA
emulator (slow; meant for tests and for machines without a GPU). Without a device and
without ``emulate``, construction raises ``RuntimeError("no CUDA device ...")``; importing
this module never needs a driver.

Inputs may be NumPy arrays, torch tensors (CPU or CUDA) or CuPy arrays; outputs come back in
the space of the inputs (CUDA tensors in, CUDA tensors out). Arrays cross through host
memory in this version.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np

from . import _core
from .config import TableConfig, tables_to_json
from .embedding import EmbeddingCollection, PreparedBatch

__all__ = ["DeviceEmbeddingCollection", "is_available", "unavailable_reason"]


def is_available() -> bool:
    """True when this build has CUDA kernels and a CUDA device with a driver is present."""
    return bool(_core.cuda_device_available())


def unavailable_reason() -> str:
    """Why the device backend cannot run here ("" when it can)."""
    return _core.cuda_unavailable_reason()


def _device_kind(x: Any) -> Optional[str]:
    """'torch' or 'cupy' for CUDA arrays of those libraries, else None."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor) and x.device.type == "cuda":
        return "torch"
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    return None


def _to_host(x: Any) -> Any:
    kind = _device_kind(x)
    if kind == "torch":
        return x.detach().cpu()
    if kind == "cupy":
        return x.get()
    return x


def _like(template: Any, out: np.ndarray) -> Any:
    kind = _device_kind(template)
    if kind == "torch":
        import torch

        return torch.from_numpy(out).to(template.device)
    if kind == "cupy":
        import cupy

        return cupy.asarray(out)
    return out


class _DevicePreparedBatch(PreparedBatch):
    """A prepared batch that remembers where its inputs lived (outputs go back there)."""

    __slots__ = ("device_template",)

    def __init__(self, core: Any, names: list[str], offsets: list[np.ndarray], torch_out: bool, train: bool,
                 device_template: Any):
        super().__init__(core, names, offsets, torch_out, train)
        self.device_template = device_template


class DeviceEmbeddingCollection(EmbeddingCollection):
    """An :class:`EmbeddingCollection` whose rows live on a CUDA device (or on the CPU
    through the CUDA emulator when ``emulate=True``).

    storage: ``"fp32"`` or ``"fp16"`` row weights (fp16 keeps fp32 accumulation and fp32
    optimizer state; the update rounds each row once).
    """

    def __init__(self, tables: Mapping[str, TableConfig], seed: int = 0, *, storage: str = "fp32",
                 emulate: bool = False, device: str = "cuda", block_threads: Optional[int] = None,
                 max_blocks: Optional[int] = None, _core_obj: Any = None):
        if getattr(self, "_c", None) is not None:
            return  # already built by EmbeddingCollection.__new__(device="cuda")
        if device != "cuda":
            raise ValueError(f"a DeviceEmbeddingCollection lives on device 'cuda', got {device!r}")
        if storage not in ("fp32", "fp16"):
            raise ValueError(f"storage must be 'fp32' or 'fp16', got {storage!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        # The emulator runs every thread as a real thread: small blocks, few of them.
        threads = block_threads if block_threads is not None else (64 if emulate else 128)
        blocks = max_blocks if max_blocks is not None else (4 if emulate else 0)
        core = _core.DeviceEmbeddingCollection(tables_to_json(dict(tables)), int(seed) & (2**64 - 1), storage,
                                               bool(emulate), threads, blocks)
        super().__init__({}, _core_obj=core)

    @property
    def storage(self) -> str:
        return self._c.storage

    @property
    def emulated(self) -> bool:
        return self._c.emulated

    def table_capacity(self, name: str) -> int:
        """Slots of table ``name``'s device hash table (grows past the max load factor)."""
        return self._c.table_capacity(self._table(name))

    def set_max_load_factor(self, value: float) -> None:
        """Load factor at which tables grow (default 0.75, at most 0.95)."""
        self._c.set_max_load_factor(float(value))

    # Arrays on the device are brought over and results returned there.
    def prepare(self, batch: Mapping[str, Any], *, train: bool = True) -> PreparedBatch:
        if isinstance(batch, PreparedBatch):
            return batch
        host = batch
        template = None
        if isinstance(batch, Mapping):
            host = {}
            for name, group in batch.items():
                parts = list(group.values()) if isinstance(group, Mapping) else list(group) if isinstance(group, (tuple, list)) else [group]
                if template is None and parts and _device_kind(parts[0]) is not None:
                    template = parts[0]
                if isinstance(group, Mapping):
                    host[name] = {k: _to_host(v) for k, v in group.items()}
                elif isinstance(group, (tuple, list)):
                    host[name] = tuple(_to_host(v) for v in group)
                else:
                    host[name] = group
        p = super().prepare(host, train=train)
        return _DevicePreparedBatch(p._core, p.names, p.offsets, p.torch, p.train, template)

    def forward(self, batch: Union[Mapping[str, Any], PreparedBatch], *, train: bool = True) -> dict[str, Any]:
        prepared = self.prepare(batch, train=train)
        out = super().forward(prepared, train=train)
        template = getattr(prepared, "device_template", None)
        if template is None:
            return out
        return {n: tuple(_like(template, np.asarray(v)) for v in o) if isinstance(o, tuple) else _like(template, np.asarray(o))
                for n, o in out.items()}

    def backward(self, batch: Union[Mapping[str, Any], PreparedBatch], grads: Mapping[str, Any]) -> int:
        prepared = self.prepare(batch, train=True)
        if isinstance(grads, Mapping):
            grads = {n: _to_host(g) for n, g in grads.items()}
        return super().backward(prepared, grads)

    def lookup(self, name: str, ids: Any, *, insert: bool = False) -> Any:
        out = super().lookup(name, _to_host(ids), insert=insert)
        return _like(ids, np.asarray(out)) if _device_kind(ids) else out

    def erase(self, name: str, ids: Any) -> int:
        return super().erase(name, _to_host(ids))

    def export(self, name: str) -> dict[str, np.ndarray]:
        """Every row of table ``name`` sorted by key: ``keys``, ``weights`` (as float32),
        ``state``, ``update_count`` and ``last_step``."""
        keys, weights, state, count, last = self._c.export(self._table(name))
        return {"keys": keys, "weights": weights, "state": state, "update_count": count, "last_step": last}

    def memory_bytes(self) -> int:
        raise NotImplementedError("memory_bytes is not reported by the CUDA backend yet")

    def bytes_per_row(self, name: str) -> int:
        raise NotImplementedError("bytes_per_row is not reported by the CUDA backend yet")

    def save(self, path: Any, *, overwrite: bool = False) -> None:
        raise NotImplementedError("checkpoints of a DeviceEmbeddingCollection are not supported yet; "
                                  "export() the tables instead")

    @classmethod
    def load(cls, path: Any) -> "DeviceEmbeddingCollection":
        raise NotImplementedError("checkpoints of a DeviceEmbeddingCollection are not supported yet")

    def restore(self, path: Any) -> None:
        raise NotImplementedError("checkpoints of a DeviceEmbeddingCollection are not supported yet")

    def __repr__(self) -> str:
        where = "emulated" if self.emulated else "cuda"
        tables = ", ".join(f"{n}(dim={c.dim}, rows={self._c.table_size(i)})"
                           for i, (n, c) in enumerate(self._configs.items()))
        return f"DeviceEmbeddingCollection([{tables}], device={where}, storage={self.storage}, step={self.step})"
