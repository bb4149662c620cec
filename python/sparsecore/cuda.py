"""CUDA backend: the embedding collection with its rows in GPU memory.

``DeviceEmbeddingCollection`` has the API of :class:`sparsecore.EmbeddingCollection` (it is
one) and the same results up to float rounding: same initial values, same update rules,
same pooling. ``DeviceEmbeddingCollection(tables, seed)`` builds one (the older spelling
``sparsecore.EmbeddingCollection(tables, seed, device="cuda")`` is deprecated).

``emulate=True`` runs the very same CUDA kernels on the CPU through sparsecore's CUDA
emulator (slow; meant for tests and for machines without a GPU). Without a device and
without ``emulate``, construction raises ``RuntimeError("no CUDA device ...")``; importing
this module never needs a driver.

Inputs may be NumPy arrays and CPU tensors (copied over and back), or CUDA arrays: torch
CUDA tensors, CuPy arrays, anything with ``__cuda_array_interface__`` or a CUDA DLPack
producer. CUDA arrays go to the kernels in place (zero-copy) and outputs are allocated on
the device by the same framework (torch in, torch out; CuPy in, CuPy out). All arrays of one
batch live in one space.

Streams: a call with torch (or CuPy) CUDA arrays runs on that framework's current stream, in
order with the work queued there (outputs come back on it, as torch ops do); a call with other
CUDA arrays runs on the collection's own stream after the ``stream`` their
``__cuda_array_interface__`` (v3) names, and one with host arrays on the collection's own
stream. Successive calls of a collection are ordered through events, whatever streams they
run on; nothing synchronises the device, and the host waits only where it reads results back
(host outputs, counts). Arrays read in place (ids, weights, gradients) are kept alive by the
prepared batch, since the work reading them may still be queued when a call returns.

Under emulation device memory is host memory: an emulated collection takes objects whose
``__cuda_array_interface__`` points at host memory as its "device" arrays (zero-copy, outputs
as NumPy arrays), while torch CUDA tensors and CuPy arrays go through host memory.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from . import _core
from ._compressed import expand_tables
from .config import TableConfig, tables_to_json
from .embedding import EmbeddingCollection, PreparedBatch, _grads_in_order, _unpack_group

__all__ = ["DeviceEmbeddingCollection", "empty_memory_cache", "emulator_block_seed", "emulator_counters",
           "is_available", "memory_cache_stats", "reset_emulator_counters", "set_allocator", "set_emulator_block_seed",
           "set_memory_cache_limit", "unavailable_reason", "use_torch_allocator"]


def is_available() -> bool:
    """True when this build has CUDA kernels and a CUDA device with a driver is present."""
    return bool(_core.cuda_device_available())


def unavailable_reason() -> str:
    """Why the device backend cannot run here ("" when it can)."""
    return _core.cuda_unavailable_reason()


def _device_ordinal(device: Any) -> int:
    """The CUDA device ordinal of ``device``: ``"cuda"`` (-1: the current device), ``"cuda:N"``,
    an int N or a ``torch.device``."""
    if isinstance(device, bool):
        raise TypeError("device must be 'cuda', 'cuda:N', an int or a torch.device, got a bool")
    if isinstance(device, (int, np.integer)):
        if device < 0:
            raise ValueError(f"device ordinal must be >= 0, got {device}")
        return int(device)
    if getattr(device, "type", None) is not None and not isinstance(device, str):  # torch.device
        if device.type != "cuda":
            raise ValueError(f"a DeviceEmbeddingCollection lives on a CUDA device, got {device}")
        return -1 if device.index is None else int(device.index)
    if isinstance(device, str):
        if device == "cuda":
            return -1
        kind, _, index = device.partition(":")
        if kind == "cuda" and index.isdigit():
            return int(index)
        raise ValueError(f"device must be 'cuda' or 'cuda:N', got {device!r}")
    raise TypeError(f"device must be 'cuda', 'cuda:N', an int or a torch.device, got {type(device).__name__}")


def memory_cache_stats(device: Any = 0, *, emulate: bool = False) -> dict[str, int]:
    """The memory cache of a CUDA device (or of an emulated one): ``limit_bytes``,
    ``cached_bytes`` (freed blocks kept for reuse), ``in_use_bytes``, ``hits``, ``misses`` and
    ``released_over_limit`` (freed blocks handed back to the driver because the cache was full)."""
    return dict(_core.cuda_memory_cache_stats(bool(emulate), _device_ordinal(device)))


def set_memory_cache_limit(limit_bytes: int, device: Any = 0, *, emulate: bool = False) -> None:
    """Caps the bytes a device's memory cache keeps (default 1 GiB); cached blocks past a lower
    cap are freed at once, and later frees past it go back to the driver."""
    _core.cuda_set_memory_cache_limit(bool(emulate), _device_ordinal(device), int(limit_bytes))


def empty_memory_cache(device: Any = 0, *, emulate: bool = False) -> None:
    """Returns every cached block of a device's memory cache to the driver."""
    _core.cuda_empty_memory_cache(bool(emulate), _device_ordinal(device))


def set_allocator(allocate: Optional[Callable[[int, int, int], int]], free: Optional[Callable[[int], None]],
                  device: Any = 0, *, emulate: bool = False) -> None:
    """Device buffers of ``device`` from an external allocator from now on, instead of the
    bounded memory cache: ``allocate(nbytes, device, stream)`` returns the address of a block
    of at least ``nbytes`` usable in the order of ``stream`` (a ``cudaStream_t`` as an int),
    ``free(address)`` takes it back; both are called with the GIL held, from whichever thread
    runs a device call. ``None, None`` goes back to the memory cache (blocks allocated before
    still go back to the allocator that made them). :func:`use_torch_allocator` passes
    PyTorch's caching allocator."""
    _core.cuda_set_device_allocator(bool(emulate), _device_ordinal(device), allocate, free)
    if allocate is not None:
        # New allocations go back to the cache before the interpreter (and torch) go away.
        atexit.register(_core.cuda_set_device_allocator, bool(emulate), _device_ordinal(device), None, None)


def use_torch_allocator(device: Any = 0) -> None:
    """Device buffers of ``device`` from PyTorch's CUDA caching allocator
    (``torch.cuda.caching_allocator_alloc`` / ``caching_allocator_delete``): one pool for
    sparsecore's buffers and torch's tensors, visible in ``torch.cuda.memory_stats`` and
    bounded by torch's own settings. RuntimeError without a CUDA device for torch."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("use_torch_allocator: torch has no CUDA device (torch.cuda.is_available() is False)")
    ordinal = _device_ordinal(device)
    set_allocator(lambda nbytes, dev, stream: torch.cuda.caching_allocator_alloc(nbytes, dev, stream),
                  torch.cuda.caching_allocator_delete, ordinal)


def emulator_counters() -> dict[str, Any]:
    """What the emulated kernels asked of a device since the last reset, counted as a device
    would see it (every emulated collection in the process together): ``launches``,
    ``host_syncs`` (synchronisations and blocking device-to-host copies), ``h2d_copies`` /
    ``h2d_bytes``, ``d2h_copies`` / ``d2h_bytes``, ``d2d_copies`` / ``d2d_bytes``, ``memsets`` /
    ``memset_bytes``, and ``kernels``: per kernel, its ``launches`` and ``blocks``. The
    emulator's times say nothing about a GPU; these counts do (launch and round-trip budgets)."""
    return dict(_core.cuda_emulator_counters())


def reset_emulator_counters() -> None:
    """Zeroes :func:`emulator_counters`."""
    _core.cuda_emulator_reset_counters()


def emulator_block_seed() -> Optional[int]:
    """Seed of the order in which the emulator runs the blocks of a launch (``None``: grid order)."""
    return _core.cuda_emulator_block_seed()


def set_emulator_block_seed(seed: Optional[int]) -> None:
    """Runs the blocks of each later emulated launch in a random order drawn from ``seed`` (a
    fresh permutation per launch), or in grid order with ``None``. The default seed is 1 (or
    ``SPARSECORE_EMULATOR_BLOCK_SEED``): no kernel may depend on the order of its blocks."""
    _core.cuda_set_emulator_block_seed(None if seed is None else int(seed) & (2**64 - 1))


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


_DLPACK_CUDA_DEVICES = (2, 13)  # kDLCUDA, kDLCUDAManaged
_TYPESTRS = {"int64": ("<i8", "=i8"), "float32": ("<f4", "=f4")}
_ITEMSIZE = {"int64": 8, "float32": 4}


class _DeviceArray(NamedTuple):
    """A C-contiguous array in device memory: its address, shape, an object keeping it alive
    and the stream its data is ready on (``__cuda_array_interface__`` v3; None: no ordering
    needed)."""

    ptr: int
    shape: tuple[int, ...]
    owner: Any
    stream: Optional[int] = None


def _cuda_interface(x: Any) -> Optional[tuple[Mapping[str, Any], Any]]:
    """(``__cuda_array_interface__``, owner) of a CUDA array, also of a producer that only
    speaks DLPack (through torch or CuPy); None for anything else."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type != "cuda":
            return None
        x = x.detach()
    try:
        iface = x.__cuda_array_interface__
    except (AttributeError, RuntimeError, TypeError):
        iface = None
    if isinstance(iface, Mapping):
        return iface, x
    dlpack_device = getattr(x, "__dlpack_device__", None)
    if dlpack_device is None or isinstance(x, np.ndarray):
        return None
    try:
        device_type = int(dlpack_device()[0])
    except Exception:  # noqa: BLE001 - not a DLPack producer after all
        return None
    if device_type not in _DLPACK_CUDA_DEVICES:
        return None
    for lib in ("torch", "cupy"):
        module = sys.modules.get(lib)
        if module is not None and hasattr(module, "from_dlpack"):
            view = module.from_dlpack(x)
            return view.__cuda_array_interface__, view
    raise TypeError(f"{type(x).__name__} is a CUDA DLPack array; reading it needs torch or cupy imported")


def parse_cuda_array(x: Any, what: str, dtype: str, shape: tuple[int, ...]) -> _DeviceArray:
    """Checks a CUDA array (``__cuda_array_interface__`` v2/v3 or DLPack) against ``dtype``
    ("int64" or "float32") and ``shape`` (entries < 0 are free): TypeError for a wrong kind
    or dtype, ValueError for a wrong shape, strides or mask. torch and CuPy integer ids are
    widened to int64 and non-contiguous arrays made contiguous on the device first."""
    kind = _device_kind(x)
    if kind == "torch":
        import torch

        x = x.detach()
        if dtype == "int64" and x.dtype != torch.int64 and not x.dtype.is_floating_point and x.dtype != torch.bool:
            x = x.to(torch.int64)
        x = x.contiguous()
    elif kind == "cupy":
        import cupy

        if dtype == "int64" and x.dtype != cupy.int64 and x.dtype.kind in "iu":
            x = x.astype(cupy.int64)
        x = cupy.ascontiguousarray(x)
    found = _cuda_interface(x)
    if found is None:
        raise TypeError(f"{what} must be a CUDA array (__cuda_array_interface__ or DLPack), got {type(x).__name__}")
    iface, owner = found
    typestr = iface.get("typestr")
    if typestr not in _TYPESTRS[dtype]:
        raise TypeError(f"{what} must have dtype {dtype}, got typestr {typestr!r}")
    got = tuple(int(d) for d in iface.get("shape", ()))
    if len(got) != len(shape):
        raise TypeError(f"{what} must have {len(shape)} dimension(s), got {len(got)}")
    if any(w >= 0 and g != w for g, w in zip(got, shape)):
        want = tuple("*" if w < 0 else w for w in shape)
        raise ValueError(f"{what} must have shape {want}, got {got}")
    if iface.get("mask") is not None:
        raise ValueError(f"{what} is a masked CUDA array; masks are not supported")
    strides = iface.get("strides")
    if strides is not None:
        expected, step = [], _ITEMSIZE[dtype]
        for d in reversed(got):
            expected.append(step)
            step *= max(d, 1)
        expected.reverse()
        if any(d > 1 and int(s) != e for d, s, e in zip(got, strides, expected)):
            raise ValueError(f"{what} must be C-contiguous, got strides {tuple(strides)}")
    data = iface.get("data")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{what}: __cuda_array_interface__ has no (pointer, read_only) 'data' entry")
    ptr = int(data[0])
    if ptr == 0 and int(np.prod(got)) != 0:
        raise ValueError(f"{what} has a null device pointer")
    stream = iface.get("stream")
    if stream is not None:
        if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) or int(stream) <= 0:
            raise ValueError(f"{what}: __cuda_array_interface__ 'stream' must be None or a positive stream handle "
                             f"(1: legacy default, 2: per-thread default), got {stream!r}")
        stream = int(stream)
    return _DeviceArray(ptr, got, owner, stream)


def _launch_limits(emulate: bool, block_threads: Optional[int], max_blocks: Optional[int]) -> tuple[int, int]:
    """(threads per block, block cap). The emulator runs every thread as a real thread:
    small blocks, few of them."""
    threads = block_threads if block_threads is not None else (64 if emulate else 128)
    blocks = max_blocks if max_blocks is not None else (4 if emulate else 0)
    return threads, blocks


class _DevicePreparedBatch(PreparedBatch):
    """A prepared batch that remembers where its inputs lived (outputs go back there).
    space: "host" (NumPy / CPU torch), "copy" (CUDA arrays brought over to an emulated
    collection) or "device" (CUDA arrays used in place)."""

    __slots__ = ("device_template", "space", "device_offsets", "owners")

    def __init__(self, core: Any, names: list[str], offsets: list[Any], torch_out: bool, train: bool,
                 device_template: Any, space: str = "host", device_offsets: Optional[list[Any]] = None,
                 owners: Optional[list[Any]] = None):
        super().__init__(core, names, offsets, torch_out, train)
        self.device_template = device_template
        self.space = space
        self.device_offsets = device_offsets or []
        self.owners = owners or []  # device inputs read in place by queued work


class DeviceEmbeddingCollection(EmbeddingCollection):
    """An :class:`EmbeddingCollection` whose rows live on a CUDA device (or on the CPU
    through the CUDA emulator when ``emulate=True``).

    storage: ``"fp32"`` or ``"fp16"`` row weights (fp16 keeps fp32 accumulation and fp32
    optimizer state; the update rounds each row once). By default it is the tables' own
    ``TableConfig.storage``, which must then be the same for every table.

    Compressed tables (``TableConfig(compression=...)``) keep their component tables as hash
    tables here (the device store holds no ``num_embeddings`` tables); their keys lie in
    ``[0, rows)``, so each holds at most its configured rows.

    device: where the rows live: ``"cuda"`` (the current device), ``"cuda:N"``, N or a
    ``torch.device``. The collection remembers it (:attr:`device`); every call runs there, and
    CUDA arrays on another device are refused with a ``ValueError`` naming both devices.

    Row policies behave as on the CPU store, bit for bit: feature admission
    (``TableConfig(admission=...)``, decided by the same filter code on the host, which reads
    the absent ids of each training batch back once), the default row of absent ids, expiry
    rules on demand (:meth:`expire`, with predicate and clock) and incrementally
    (``scan_per_step`` rows per backward, in key order), a row capacity with LRU / LFU
    eviction or refusal (the CPU store's shards, scores and victims; ``eviction="sampled"`` is
    refused here), and :meth:`export_full` / :meth:`export_delta`.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "DeviceEmbeddingCollection":
        # EmbeddingCollection.__new__ dispatches on device="cpu" / "cuda"; this class takes
        # every CUDA device spelling itself (__init__).
        return object.__new__(cls)

    def __init__(self, tables: Mapping[str, TableConfig], seed: int = 0, *, storage: Optional[str] = None,
                 emulate: bool = False, device: Any = "cuda", block_threads: Optional[int] = None,
                 max_blocks: Optional[int] = None, _core_obj: Any = None):
        if getattr(self, "_c", None) is not None:
            return  # already built by EmbeddingCollection.__new__(device="cuda")
        ordinal = _device_ordinal(device)
        if storage is None:
            kinds = {getattr(cfg, "storage", "fp32") for cfg in dict(tables).values()} or {"fp32"}
            if len(kinds) > 1:
                raise ValueError("a DeviceEmbeddingCollection stores every table alike, but the tables ask "
                                 f"for storage {sorted(kinds)}; pass storage= to choose one")
            storage = kinds.pop()
        if storage not in ("fp32", "fp16"):
            raise ValueError(f"storage must be 'fp32' or 'fp16', got {storage!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not emulate and not is_available():
            raise RuntimeError(f"{unavailable_reason()}: a DeviceEmbeddingCollection needs an NVIDIA "
                               "GPU and its driver. Use sparsecore.EmbeddingCollection on the CPU (the same "
                               "results), or emulate=True to run the CUDA kernels on the CPU (slow; for tests)")
        core = _core.DeviceEmbeddingCollection(tables_to_json(expand_tables(dict(tables), dense=False)), int(seed) & (2**64 - 1),
                                               storage,
                                               bool(emulate), *_launch_limits(emulate, block_threads, max_blocks),
                                               ordinal)
        super().__init__({}, _core_obj=core)
        self._set_predicates(tables)

    @classmethod
    def _wrap(cls, core: Any) -> "DeviceEmbeddingCollection":
        obj = object.__new__(cls)
        EmbeddingCollection.__init__(obj, {}, _core_obj=core)
        return obj

    @property
    def storage(self) -> str:
        return self._c.storage

    @property
    def emulated(self) -> bool:
        return self._c.emulated

    @property
    def device(self) -> str:
        """The device the rows live on, ``"cuda:N"``."""
        return f"cuda:{self._c.device}"

    def table_capacity(self, name: str) -> int:
        """Slots of table ``name``'s device hash table (grows past the max load factor)."""
        return self._c.table_capacity(self._table(name))

    def set_max_load_factor(self, value: float) -> None:
        """Load factor at which tables grow (default 0.75, at most 0.95)."""
        self._c.set_max_load_factor(float(value))

    # ----------------------------------------------------------------------------- memory spaces
    def _space(self, x: Any) -> str:
        """"device" (used in place), "copy" (brought over through host memory) or "host"."""
        if _device_kind(x) is not None:
            # The emulator's device memory is host memory: real CUDA arrays must be copied.
            return "copy" if self.emulated else "device"
        if self.emulated:
            try:
                has_interface = isinstance(x.__cuda_array_interface__, Mapping)
            except (AttributeError, RuntimeError, TypeError):
                has_interface = False
            return "device" if has_interface else "host"
        return "device" if _cuda_interface(x) is not None else "host"

    def _allocate(self, template: Any, shape: tuple[int, ...]) -> tuple[Any, int]:
        """A float32 array of ``shape`` in device memory, from the framework of ``template``,
        and its address."""
        kind = _device_kind(template)
        if kind is None and self.emulated:
            host = np.empty(shape, np.float32)  # emulated device memory
            return host, host.ctypes.data
        if kind is None:
            kind = "cupy" if "cupy" in sys.modules else "torch" if "torch" in sys.modules else None
        if kind == "torch":
            import torch

            device = template.device if _device_kind(template) == "torch" else torch.device(self.device)
            out = torch.empty(shape, dtype=torch.float32, device=device)
            return out, out.data_ptr()
        if kind == "cupy":
            import cupy

            out = cupy.empty(shape, dtype=cupy.float32)
            return out, out.data.ptr
        raise RuntimeError("outputs for CUDA arrays of a third library are allocated with torch or cupy; import one")

    def _streams(self, template: Any, arrays: list[_DeviceArray]) -> dict[str, Any]:
        """The stream a call with CUDA arrays runs on (the current stream of the framework its
        outputs come from; None: the collection's own) and the producer streams it waits for."""
        kind = _device_kind(template)
        if kind is None and not self.emulated:
            kind = "cupy" if "cupy" in sys.modules else "torch" if "torch" in sys.modules else None
        work: Optional[int] = None
        if kind == "torch":
            import torch

            device = template.device if _device_kind(template) == "torch" else torch.device(self.device)
            work = int(torch.cuda.current_stream(device).cuda_stream)
        elif kind == "cupy":
            import cupy

            work = int(cupy.cuda.get_current_stream().ptr)
        waits = sorted({a.stream for a in arrays if a is not None and a.stream is not None and a.stream != work})
        return {"stream": work, "wait_for": waits}

    def _lengths(self, offsets: Any, parsed: _DeviceArray) -> Any:
        """Bag lengths (int64[B]) from device offsets, in the offsets' framework."""
        if _device_kind(offsets) is not None:
            return offsets[1:] - offsets[:-1]
        n = parsed.shape[0]
        if self.emulated:
            host = np.ctypeslib.as_array((ctypes.c_int64 * n).from_address(parsed.ptr)) if n else np.zeros(0, np.int64)
            return np.diff(host)
        import cupy

        o = cupy.asarray(offsets)
        return o[1:] - o[:-1]

    def _first_ids(self, batch: Mapping[str, Any]) -> Any:
        for name, group in batch.items():
            return _unpack_group(name, group)[0]
        return None

    # ----------------------------------------------------------------------------- batches
    def prepare(self, batch: Union[Mapping[str, Any], PreparedBatch], *, train: bool = True,
                include_last_offset: Optional[bool] = None) -> PreparedBatch:
        """As :meth:`EmbeddingCollection.prepare`. A batch of CUDA arrays is read in place and
        its offsets must be CSR (B+1 entries): ``include_last_offset=False`` raises ValueError."""
        if isinstance(batch, PreparedBatch):
            return batch
        # Compressed tables map and compose their ids on the host: their batches take the copy path.
        if (isinstance(batch, Mapping) and self._space(self._first_ids(batch)) == "device"
                and not any(name in self._compressed for name in batch)):
            if include_last_offset is not None and not isinstance(include_last_offset, bool):
                raise TypeError(f"include_last_offset must be True, False or None, got {include_last_offset!r}")
            if include_last_offset is False:
                raise ValueError("offsets of CUDA arrays must be CSR (B+1 entries ending at len(ids)); "
                                 "include_last_offset=False (torch's start offsets) is read from host arrays only")
            return self._prepare_device(batch, train)
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
        p = super().prepare(host, train=train, include_last_offset=include_last_offset)
        out = _DevicePreparedBatch(p._core, p.names, p.offsets, p.torch, p.train, template,
                                   "copy" if template is not None else "host")
        out.expansion = p.expansion
        return out

    def _prepare_device(self, batch: Mapping[str, Any], train: bool) -> PreparedBatch:
        groups, names, offsets = [], [], []
        keep: list[Any] = []  # owners of the arrays read in place by the queued work
        parsed: list[_DeviceArray] = []
        template = None
        for name, group in batch.items():
            t = self._table(name)
            ids, offs, weights = _unpack_group(name, group)
            for arr, label in ((ids, "ids"), (offs, "offsets"), (weights, "weights")):
                if arr is not None and self._space(arr) != "device":
                    raise TypeError(f"{label} of group '{name}' is not a CUDA array but the batch's first ids are; "
                                    "pass every array of a batch in one memory space")
            template = ids if template is None else template
            ids_a = parse_cuda_array(ids, f"ids of group '{name}'", "int64", (-1,))
            offs_a = parse_cuda_array(offs, f"offsets of group '{name}'", "int64", (-1,))
            if offs_a.shape[0] < 1:
                raise ValueError(f"offsets of group '{name}' must have at least one element (B + 1)")
            w_a = None if weights is None else parse_cuda_array(weights, f"weights of group '{name}'", "float32",
                                                                (ids_a.shape[0],))
            keep.extend(a.owner for a in (ids_a, offs_a, w_a) if a is not None)
            parsed.extend(a for a in (ids_a, offs_a, w_a) if a is not None)
            groups.append((t, ids_a.ptr, ids_a.shape[0], offs_a.ptr, offs_a.shape[0] - 1, w_a.ptr if w_a else 0))
            names.append(name)
            offsets.append((offs_a.owner, offs_a))
        core = self._c.prepare_device(groups, bool(train), **self._streams(template, parsed))
        return _DevicePreparedBatch(core, names, [], False, bool(train), template, "device", offsets, keep)

    def forward(self, batch: Union[Mapping[str, Any], PreparedBatch], *, train: bool = True,
                include_last_offset: Optional[bool] = None) -> dict[str, Any]:
        prepared = self.prepare(batch, train=train, include_last_offset=include_last_offset)
        space = prepared.space if isinstance(prepared, _DevicePreparedBatch) else "host"
        if isinstance(prepared, _DevicePreparedBatch) and space == "device":
            shapes = self._c.output_shapes(prepared._core)
            outs = [self._allocate(prepared.device_template, tuple(s)) for s in shapes]
            self._c.forward_device(prepared._core, [ptr for _, ptr in outs],
                                   **self._streams(prepared.device_template, []))
            result: dict[str, Any] = {}
            for name, (out, _), (offs, parsed) in zip(prepared.names, outs, prepared.device_offsets):
                result[name] = (out, self._lengths(offs, parsed)) if self._configs[name].pooling == "none" else out
            return result
        out = super().forward(prepared, train=train)
        if not isinstance(prepared, _DevicePreparedBatch) or space != "copy":
            return out
        template = prepared.device_template
        return {n: tuple(_like(template, np.asarray(v)) for v in o) if isinstance(o, tuple) else _like(template, np.asarray(o))
                for n, o in out.items()}

    def backward(self, batch: Union[Mapping[str, Any], PreparedBatch], grads: Mapping[str, Any], *,
                 include_last_offset: Optional[bool] = None) -> int:
        prepared = self.prepare(batch, train=True, include_last_offset=include_last_offset)
        if not isinstance(prepared, _DevicePreparedBatch) or prepared.space != "device":
            if isinstance(grads, Mapping):
                grads = {n: _to_host(g) for n, g in grads.items()}
            return super().backward(prepared, grads)
        shapes = self._c.output_shapes(prepared._core)
        parsed = []
        for name, grad, shape in zip(prepared.names, _grads_in_order(prepared, grads), shapes):
            if self._space(grad) != "device":
                raise TypeError(f"gradient of group '{name}' must be a CUDA array like the batch it belongs to")
            parsed.append(parse_cuda_array(grad, f"gradient of group '{name}'", "float32", tuple(shape)))
        prepared.owners.extend(a.owner for a in parsed)  # read by work still queued when the call returns
        return self._c.backward_device(prepared._core, [a.ptr for a in parsed],
                                       **self._streams(prepared.device_template, parsed))

    def lookup(self, name: str, ids: Any, *, insert: bool = False) -> Any:
        if self._space(ids) == "device":
            t = self._table(name)
            keys = parse_cuda_array(ids, f"ids of table '{name}'", "int64", (-1,))
            out, ptr = self._allocate(ids, (keys.shape[0], self._configs[name].dim))
            self._c.lookup_device(t, keys.ptr, keys.shape[0], ptr, bool(insert), **self._streams(ids, [keys]))
            return out
        out = super().lookup(name, _to_host(ids), insert=insert)
        return _like(ids, np.asarray(out)) if _device_kind(ids) else out

    def erase(self, name: str, ids: Any) -> int:
        if self._space(ids) == "device":
            keys = parse_cuda_array(ids, f"ids of table '{name}'", "int64", (-1,))
            return self._c.erase_device(self._table(name), keys.ptr, keys.shape[0], **self._streams(ids, [keys]))
        return super().erase(name, _to_host(ids))

    def export(self, name: str) -> dict[str, np.ndarray]:
        """Every row of table ``name`` sorted by key: ``keys``, ``weights`` (as float32),
        ``state``, ``update_count`` and ``last_step``."""
        keys, weights, state, count, last = self._c.export(self._table(name))
        return {"keys": keys, "weights": weights, "state": state, "update_count": count, "last_step": last}

    # ----------------------------------------------------------------------------- exports
    def export_full(self, path: Union[str, os.PathLike], *, dtype: str = "fp32") -> int:
        """As :meth:`sparsecore.EmbeddingCollection.export_full`: the rows come to host
        memory (:meth:`to_host`) and are written in the same format, so an export of a device
        collection equals the CPU collection's export of the same rows."""
        return _core.export_full(self._c.to_host(), os.fspath(path), dtype)

    def export_delta(self, path: Union[str, os.PathLike], *, since: int, dtype: str = "fp32") -> int:
        """As :meth:`sparsecore.EmbeddingCollection.export_delta`: the rows changed after
        ``since`` (their ``last_step``) and the keys removed after it (erase, expire), through
        host memory in the same format."""
        return _core.export_delta(self._c.to_host(), os.fspath(path), int(since), dtype)

    def set_deleted_keys_capacity(self, capacity: int, table: Optional[str] = None) -> None:
        for name in [table] if table is not None else self.names:
            self._c.set_deleted_keys_capacity(self._table(name), int(capacity))

    def memory_bytes(self) -> int:
        """Device bytes of every table's slot arrays (keys, rows, state, metadata) at their
        current capacity."""
        return self._c.memory_bytes()

    def bytes_per_row(self, name: str) -> int:
        """Device bytes of one slot of table ``name`` (key, weights in the row storage,
        optimizer state, update count, last step)."""
        return self._c.table_row_bytes(self._table(name))

    # ----------------------------------------------------------------------------- checkpoints
    def save(self, path: Union[str, os.PathLike, None] = None, *, overwrite: bool = False) -> None:
        """Writes a checkpoint in the CPU engine's format (the rows go through host memory):
        :meth:`sparsecore.EmbeddingCollection.load` reads it, and so does :meth:`load`."""
        if path is None:
            raise TypeError("DeviceEmbeddingCollection.save() needs a path")
        self._c.save(os.fspath(path), bool(overwrite))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, storage: str = "fp32", emulate: bool = False,
             block_threads: Optional[int] = None, max_blocks: Optional[int] = None,
             device: Any = "cuda") -> "DeviceEmbeddingCollection":
        """Reads a checkpoint written by either engine onto the device (or the emulator)."""
        return cls._wrap(_core.DeviceEmbeddingCollection.load(os.fspath(path), storage, bool(emulate),
                                                              *_launch_limits(emulate, block_threads, max_blocks),
                                                              _device_ordinal(device)))

    def restore(self, path: Union[str, os.PathLike, None] = None) -> None:
        """Replaces the rows and step with a checkpoint's (same table names and dims);
        unchanged on error. Batches prepared before are refused afterwards."""
        if path is None:
            raise TypeError("DeviceEmbeddingCollection.restore() needs a path")
        self._c.restore(os.fspath(path))
        EmbeddingCollection.__init__(self, {}, _core_obj=self._c)

    def to_host(self) -> EmbeddingCollection:
        """A CPU :class:`sparsecore.EmbeddingCollection` with this collection's rows, state and step."""
        return EmbeddingCollection({}, _core_obj=self._c.to_host())

    @classmethod
    def from_host(cls, host: EmbeddingCollection, *, storage: str = "fp32", emulate: bool = False,
                  block_threads: Optional[int] = None, max_blocks: Optional[int] = None,
                  device: Any = "cuda") -> "DeviceEmbeddingCollection":
        """A device collection with the rows, state and step of a CPU collection."""
        if isinstance(host, DeviceEmbeddingCollection) or not isinstance(host, EmbeddingCollection):
            raise TypeError(f"from_host needs a CPU sparsecore.EmbeddingCollection, got {type(host).__name__}")
        return cls._wrap(_core.DeviceEmbeddingCollection.from_host(host._c, storage, bool(emulate),
                                                                   *_launch_limits(emulate, block_threads, max_blocks),
                                                                   _device_ordinal(device)))

    def __repr__(self) -> str:
        where = f"{self.device} (emulated)" if self.emulated else self.device
        tables = ", ".join(f"{n}(dim={c.dim}, rows={self._c.table_size(i)})"
                           for i, (n, c) in enumerate(self._configs.items()))
        return f"DeviceEmbeddingCollection([{tables}], device={where}, storage={self.storage}, step={self.step})"
