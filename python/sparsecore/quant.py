"""Power-of-two quantization of dense weights and row quantization of serving tables.

* :class:`Quantizer` projects weights onto ``alpha * codebook`` (codebooks of zero and signed
  powers of two) and trains PyTorch modules toward such weights by ADMM (Leng et al., AAAI 2018):
  the penalty ``rho/2 ||W - G + U||^2`` joins the loss, and every ``update_every`` steps
  ``G <- proj(W + U)``, ``U <- U + W - G``; an optional extra-gradient step evaluates the
  gradient at a predicted point. ``finalize()`` snaps W onto the codebook, ``export()`` packs
  4-bit sign+exponent codes (two per byte) with a scale per layer or per output channel.
* :func:`shift_matmul` serves packed weights: ``y = x @ W.T`` with float activations (a table
  lookup of ``±2^k`` in an FMA) or int8/int16 fixed-point activations (true shifts, exact int32
  sums), on the CPU or, through :class:`DevicePackedWeights`, with the CUDA kernels.
* :class:`QuantizedRows` and :class:`QuantizedEmbeddingTable` store embedding rows as fp16,
  int8 or int4 rowwise (scale + bias) and pool them, dequantizing on the fly.

The packed format and the rounding of every operation are documented in
``csrc/sparsecore/quant/*.h``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from . import _core
from ._arrays import as_int64, is_torch, to_torch
from .cuda import _device_kind, _like, _to_host

logger = logging.getLogger(__name__)

#: Named codebooks (alpha scales them). "pow2-2bit" is sign + one exponent bit (no zero).
CODEBOOKS: dict[str, tuple[float, ...]] = {
    "binary": (-1.0, 1.0),
    "ternary": (-1.0, 0.0, 1.0),
    "pow2-2bit": (-2.0, -1.0, 1.0, 2.0),
    "pow2-3bit": (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0),
}

Codebook = Union[str, Sequence[float]]


def _resolve_codebook(codebook: Codebook) -> np.ndarray:
    if isinstance(codebook, str):
        if codebook not in CODEBOOKS:
            raise ValueError(f"codebook must be one of {sorted(CODEBOOKS)} or a list of values, got '{codebook}'")
        values: Sequence[float] = CODEBOOKS[codebook]
    else:
        values = codebook
    cb = np.asarray(values, dtype=np.float64)
    if cb.ndim != 1 or cb.size == 0:
        raise ValueError("codebook must be a non-empty list of values")
    if not np.all(np.isfinite(cb)):
        raise ValueError("codebook values must be finite")
    cb = np.unique(cb.astype(np.float32))
    if not np.any(cb != 0):
        raise ValueError("codebook needs a non-zero value")
    return cb


def _is_pow2_codebook(cb: np.ndarray) -> Optional[int]:
    """The exponent of the smallest non-zero magnitude when every value is 0 or ±2^k and the
    magnitudes span at most 7 octaves (what 4-bit codes hold); None otherwise."""
    mags = np.abs(cb[cb != 0]).astype(np.float64)
    exps = np.log2(mags)
    if not np.all(exps == np.round(exps)):
        return None
    lo, hi = int(exps.min()), int(exps.max())
    return lo if hi - lo <= 6 else None


def _as_weight_matrix(weight: Any, what: str) -> tuple[np.ndarray, tuple[int, ...]]:
    if is_torch(weight):
        weight = weight.detach().cpu().numpy()
    w = np.asarray(weight)
    if w.dtype != np.float32:
        if w.dtype.kind != "f":
            raise TypeError(f"{what} must be a float array, got dtype {w.dtype}")
        w = w.astype(np.float32)
    if w.ndim == 0:
        raise ValueError(f"{what} must have at least one dimension")
    shape = w.shape
    rows = shape[0]
    return np.ascontiguousarray(w.reshape(rows, -1) if w.ndim != 1 else w.reshape(1, -1)), shape


# --------------------------------------------------------------------------------------- packing
@dataclass
class PackedWeights:
    """A weight matrix as 4-bit power-of-two codes.

    ``codes`` uint8 (rows, ceil(cols/2)): column 2j in the low nibble of byte j, 2j+1 in the
    high nibble; a nibble ``n`` is ``s * 2^(m-1)`` with ``m = n & 7`` (0 means zero) and sign bit
    ``n & 8``. ``alpha`` float32 (rows): the scale of each row (repeated for a per-layer scale).
    ``shape`` is the original weight shape (rows = shape[0]; cols = product of the rest).
    """

    codes: np.ndarray
    alpha: np.ndarray
    shape: tuple[int, ...]
    granularity: str = "channel"

    def __post_init__(self) -> None:
        # plain ints, computed once: shift_matmul reads them on every call
        self.rows = int(self.codes.shape[0])
        self.cols = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else int(self.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the codes plus the scales (one per layer or one per row)."""
        scales = 1 if self.granularity == "layer" else self.rows
        return int(self.codes.nbytes) + 4 * scales

    @classmethod
    def from_weight(cls, weight: Any, alpha: Any, granularity: Optional[str] = None) -> "PackedWeights":
        """Packs a weight already of the form ``alpha[r] * (0 or ±2^k, 0 <= k <= 6)``."""
        w, shape = _as_weight_matrix(weight, "weight")
        a = np.ascontiguousarray(np.broadcast_to(np.asarray(alpha, dtype=np.float32).reshape(-1), (w.shape[0],)))
        if granularity is None:
            granularity = "layer" if np.all(a == a[0]) else "channel"
        return cls(_core.pack_pow2(w, a), a.copy(), tuple(shape), granularity)

    def dequantize(self) -> np.ndarray:
        """The float32 weight, in its original shape."""
        return _core.unpack_pow2(self.codes, self.alpha, self.cols).reshape(self.shape)

    def to_device(self, *, emulate: bool = False, block_threads: Optional[int] = None,
                  max_blocks: Optional[int] = None) -> "DevicePackedWeights":
        """Copies the weights to a CUDA device once (see :class:`DevicePackedWeights`)."""
        return DevicePackedWeights(self, emulate=emulate, block_threads=block_threads, max_blocks=max_blocks)


def pack_pow2(weight: Any, alpha: Any) -> PackedWeights:
    """Packs ``weight`` (each element ``alpha[row] * (0 or ±2^k)``, 0 <= k <= 6) into 4-bit codes."""
    return PackedWeights.from_weight(weight, alpha)


# ----------------------------------------------------------------------------- shift matmul
class DevicePackedWeights:
    """:class:`PackedWeights` copied once to a CUDA device, served by the CUDA shift-matmul
    kernels (``csrc/cuda/shift_matmul.cuh``) through :func:`shift_matmul`.

    ``emulate=True`` runs the very same kernels on the CPU through sparsecore's CUDA emulator
    (slow; for tests and machines without a GPU). Without a device and without ``emulate``,
    construction raises ``RuntimeError("no CUDA device ...")``.
    """

    def __init__(self, packed: PackedWeights, *, emulate: bool = False, block_threads: Optional[int] = None,
                 max_blocks: Optional[int] = None):
        if not isinstance(packed, PackedWeights):
            raise TypeError(f"packed must be PackedWeights, got {type(packed).__name__}")
        # The emulator runs every thread as a real thread: small blocks, few of them.
        threads = block_threads if block_threads is not None else (64 if emulate else 128)
        blocks = max_blocks if max_blocks is not None else (4 if emulate else 0)
        self.packed = packed
        self.rows, self.cols, self.shape = packed.rows, packed.cols, packed.shape
        self._c = _core.DevicePackedWeights(packed.codes, packed.alpha, packed.cols, bool(emulate), threads, blocks)

    @property
    def emulated(self) -> bool:
        return bool(self._c.emulated)

    @property
    def device_bytes(self) -> int:
        """Bytes held on the device (codes and one alpha per row)."""
        return int(self._c.device_bytes)

    def __repr__(self) -> str:
        where = "emulated" if self.emulated else "cuda"
        return f"DevicePackedWeights(rows={self.rows}, cols={self.cols}, device={where})"


def _shift_matmul_2d(x2: np.ndarray, weights: Union[PackedWeights, DevicePackedWeights],
                     x_scale: Optional[float]) -> np.ndarray:
    device = weights._c if isinstance(weights, DevicePackedWeights) else None
    packed = weights.packed if isinstance(weights, DevicePackedWeights) else weights
    if x2.dtype == np.float32:
        if x_scale is not None:
            raise ValueError("x_scale applies to int8/int16 activations only")
        if device is not None:
            return device.matmul(x2)
        return _core.shift_matmul_float(x2, packed.codes, packed.alpha, packed.cols)
    if x2.dtype == np.int8:
        acc = device.matmul_int8(x2) if device is not None else _core.shift_matmul_int8(x2, packed.codes, packed.cols)
    elif x2.dtype == np.int16:
        acc = device.matmul_int16(x2) if device is not None else _core.shift_matmul_int16(x2, packed.codes, packed.cols)
    else:
        raise TypeError(f"x must have dtype float32, int8 or int16, got {x2.dtype}")
    if x_scale is None:
        return acc
    return _core.fixed_to_float(acc, packed.alpha, float(x_scale))


def _placement(x: Any, packed: Any, device: Optional[str], emulate: bool) -> Union[PackedWeights, DevicePackedWeights]:
    """The weights the call runs on: host PackedWeights, or DevicePackedWeights (CUDA)."""
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if isinstance(packed, DevicePackedWeights):
        return packed.packed if device == "cpu" else packed
    if not isinstance(packed, PackedWeights):
        raise TypeError(f"packed must be PackedWeights or DevicePackedWeights, got {type(packed).__name__}")
    if device == "cuda" or emulate or (device is None and _device_kind(x) is not None):
        return DevicePackedWeights(packed, emulate=emulate)
    return packed


def _torch_cuda_matmul(x: Any, weights: DevicePackedWeights) -> Any:
    """float32 CUDA tensor in, CUDA tensor out: the kernels read and write torch's memory on
    torch's current stream (no host round trip)."""
    import torch

    x2 = x.detach().reshape(-1, weights.cols).contiguous()
    y = torch.empty((x2.shape[0], weights.rows), dtype=torch.float32, device=x.device)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream().cuda_stream
        weights._c.matmul_device(x2.data_ptr(), x2.shape[0], y.data_ptr(), stream)
    return y.reshape(*x.shape[:-1], weights.rows)


def shift_matmul(x: Any, packed: Union[PackedWeights, DevicePackedWeights], *, x_scale: Optional[float] = None,
                 device: Optional[str] = None, emulate: bool = False) -> Any:
    """``y = x @ W.T`` for W given as :class:`PackedWeights` (rows = outputs).

    ``x`` (..., cols): float32, or int8/int16 fixed point. Fixed-point inputs are summed exactly
    in int32 (true shifts); without ``x_scale`` the int32 sums are returned, with it
    ``float32(acc) * alpha * x_scale``. torch input gives torch output, numpy gives numpy.
    Float32 results agree with ``x @ W.T`` to float32 rounding and are the same bits on every
    x86-64 (AVX-512, AVX2 or neither); x with fewer than 4 rows is summed in another order than
    larger batches, so a row may differ in its last bits between the two.

    On CUDA: ``packed`` a :class:`DevicePackedWeights` (weights uploaded once), or
    ``device="cuda"``, or ``x`` a CUDA array (torch or CuPy) with host ``PackedWeights`` (uploaded
    for this call). ``emulate=True`` runs the CUDA kernels through the CPU emulator. Results come
    back where ``x`` lives; float32 CUDA tensors are read in place on torch's current stream,
    other inputs cross through host memory.
    """
    if (type(x) is np.ndarray and x.ndim == 2 and x.dtype == np.float32 and x_scale is None
            and type(packed) is PackedWeights and x.flags.c_contiguous and device is None and not emulate):
        return _core.shift_matmul_float(x, packed.codes, packed.alpha, packed.cols)  # the serving fast path
    weights = _placement(x, packed, device, emulate)
    kind = _device_kind(x)
    if kind is not None and getattr(x, "shape", (0,))[-1:] != (weights.cols,):
        raise ValueError(f"x must have shape (..., {weights.cols}) for a ({weights.rows}, {weights.cols}) weight, "
                         f"got {tuple(x.shape)}")
    if (kind == "torch" and isinstance(weights, DevicePackedWeights) and not weights.emulated and x_scale is None
            and str(x.dtype) == "torch.float32"):
        return _torch_cuda_matmul(x, weights)
    host = _to_host(x)
    torch_in = is_torch(host)
    xa = host.detach().cpu().numpy() if torch_in else np.asarray(host)
    if xa.ndim == 0 or xa.shape[-1] != weights.cols:
        raise ValueError(f"x must have shape (..., {weights.cols}) for a ({weights.rows}, {weights.cols}) weight, "
                         f"got {xa.shape}")
    lead = xa.shape[:-1]
    y = _shift_matmul_2d(np.ascontiguousarray(xa.reshape(-1, weights.cols)), weights, x_scale)
    y = y.reshape(*lead, weights.rows)
    if kind is not None:
        return _like(x, y)
    return to_torch(y) if torch_in else y


def quantize_activations(x: Any, bits: int = 8, scale: Optional[float] = None) -> tuple[np.ndarray, float]:
    """Symmetric fixed point for :func:`shift_matmul`: ``q = clip(rint(x / scale))`` (round half to
    even) as int8 (bits=8) or int16 (bits=16); ``scale`` defaults to ``max|x| / (2^(bits-1) - 1)``."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    xa = np.asarray(x.detach().cpu().numpy() if is_torch(x) else x, dtype=np.float32)
    if not np.all(np.isfinite(xa)):
        raise ValueError("activations must be finite")
    top = 2 ** (bits - 1) - 1
    if scale is None:
        m = float(np.max(np.abs(xa))) if xa.size else 0.0
        scale = m / top if m > 0 else 1.0
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale}")
    q = np.clip(np.rint(xa / np.float32(scale)), -top, top)
    return q.astype(np.int8 if bits == 8 else np.int16), float(scale)


# -------------------------------------------------------------------------------- quantizer
class Quantizer:
    """Projection onto ``alpha * codebook`` and ADMM training toward it.

    codebook: "pow2-3bit" ({0,±1,±2,±4}), "pow2-2bit" ({±1,±2}), "ternary", "binary" or a list.
    granularity: "layer" (one alpha per weight) or "channel" (one alpha per output row).
    rho, rho_growth, rho_max: penalty weight, multiplied by rho_growth at every ADMM update.
    update_every: optimizer steps between ADMM updates of G and U.
    extragradient: take the optimizer step with the gradient at a predicted point
    ``W - extragradient_lr * grad`` (lr defaults to the optimizer's).
    """

    def __init__(self, codebook: Codebook = "pow2-3bit", granularity: str = "layer", *, rho: float = 1e-2,
                 rho_growth: float = 1.0, rho_max: float = float("inf"), update_every: int = 1,
                 extragradient: bool = False, extragradient_lr: Optional[float] = None, max_iter: int = 100):
        if granularity not in ("layer", "channel"):
            raise ValueError(f"granularity must be 'layer' or 'channel', got '{granularity}'")
        if not rho > 0 or not rho_growth >= 1.0:
            raise ValueError(f"rho must be > 0 and rho_growth >= 1, got {rho}, {rho_growth}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.codebook = _resolve_codebook(codebook)
        self.granularity = granularity
        self.rho, self.rho_growth, self.rho_max = float(rho), float(rho_growth), float(rho_max)
        self.update_every = int(update_every)
        self.extragradient = bool(extragradient)
        self.extragradient_lr = extragradient_lr
        self.max_iter = int(max_iter)
        self._params: dict[str, Any] = {}
        self._G: dict[str, Any] = {}
        self._U: dict[str, Any] = {}
        self._snapped: dict[str, np.ndarray] = {}
        self._steps = 0
        self._model = None

    # ---- projection
    def project(self, weight: Any) -> tuple[Any, np.ndarray]:
        """The nearest ``alpha * codebook`` point found by alternating closed forms. Returns
        (projected weight of the same shape and kind, alpha float32 of 1 or rows entries)."""
        w, shape = _as_weight_matrix(weight, "weight")
        projected, alpha, _ = _core.project_pow2(w, self.codebook.tolist(), self.granularity == "channel",
                                                 self.max_iter)
        projected = projected.reshape(shape)
        if is_torch(weight):
            return to_torch(projected).to(weight.device), alpha
        return projected, alpha

    def pack(self, weight: Any) -> PackedWeights:
        """Projects ``weight`` and packs it; the codebook must be zero and ±2^k over <= 7 octaves."""
        projected, alpha = self.project(weight)
        return self._pack_projected(projected, alpha)

    def _pack_projected(self, projected: Any, alpha: np.ndarray) -> PackedWeights:
        base = _is_pow2_codebook(self.codebook)
        if base is None:
            raise ValueError("export needs a codebook of 0 and ±2^k spanning at most 7 octaves (4-bit codes), "
                             f"got {self.codebook.tolist()}")
        w, shape = _as_weight_matrix(projected, "weight")
        # alpha absorbs the smallest magnitude so the codes are 2^0 .. 2^6
        a = (np.asarray(alpha, dtype=np.float32) * np.float32(2.0 ** base)).reshape(-1)
        a = np.ascontiguousarray(np.broadcast_to(a, (w.shape[0],)))
        return PackedWeights(_core.pack_pow2(w, a), a.copy(), tuple(shape), self.granularity)

    # ---- ADMM on PyTorch modules
    def attach(self, model: Any, params: Optional[Iterable[tuple[str, Any]]] = None) -> "Quantizer":
        """Quantizes ``params`` (name, parameter) of ``model``; by default the weight of every
        ``nn.Linear`` and ``nn.Conv*`` layer. Initialises G = proj(W), U = 0."""
        import torch

        if params is None:
            kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
            params = [(f"{name}.weight" if name else "weight", mod.weight)
                      for name, mod in model.named_modules() if isinstance(mod, kinds)]
        self._model = model
        self._params = dict(params)
        if not self._params:
            raise ValueError("no parameters to quantize")
        with torch.no_grad():
            for name, p in self._params.items():
                if not torch.isfinite(p).all():
                    raise ValueError(f"parameter '{name}' has NaN or Inf values")
                self._G[name] = self.project(p.detach())[0]
                self._U[name] = torch.zeros_like(p)
        self._snapped.clear()
        self._steps = 0
        return self

    def penalty(self) -> Any:
        """``rho/2 * sum ||W - G + U||^2`` over the quantized parameters (differentiable in W)."""
        self._require_attached()
        total = 0.0
        for name, p in self._params.items():
            total = total + (p - self._G[name] + self._U[name]).pow(2).sum()
        return 0.5 * self.rho * total

    def step(self) -> None:
        """Call after every optimizer step: each ``update_every`` steps updates G, U and rho."""
        import torch

        self._require_attached()
        self._steps += 1
        if self._steps % self.update_every:
            return
        with torch.no_grad():
            for name, p in self._params.items():
                if not torch.isfinite(p).all():
                    raise ValueError(f"parameter '{name}' has NaN or Inf values")
                self._G[name] = self.project(p.detach() + self._U[name])[0]
                self._U[name] += p.detach() - self._G[name]
        self.rho = min(self.rho * self.rho_growth, self.rho_max)

    def train_step(self, closure: Any, optimizer: Any) -> Any:
        """One ADMM training step. ``closure()`` returns the loss (no backward); the penalty is
        added here. With extragradient, the gradient is taken at the predicted point
        ``W - lr * grad(W)`` and applied at W. Calls :meth:`step`. Returns the loss at W."""
        import torch

        self._require_attached()
        optimizer.zero_grad()
        loss = closure()
        (loss + self.penalty()).backward()
        if self.extragradient:
            lr = self.extragradient_lr or optimizer.param_groups[0]["lr"]
            params = [p for g in optimizer.param_groups for p in g["params"]]
            saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= lr * p.grad
            optimizer.zero_grad()
            (closure() + self.penalty()).backward()
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        optimizer.step()
        self.step()
        return loss.detach()

    def finalize(self) -> None:
        """Snaps every quantized parameter onto the codebook: W <- G = proj(W)."""
        import torch

        self._require_attached()
        with torch.no_grad():
            for name, p in self._params.items():
                self._G[name], alpha = self.project(p.detach())
                self._snapped[name] = alpha
                p.copy_(self._G[name])

    def export(self) -> dict[str, PackedWeights]:
        """Packed 4-bit codes of every quantized parameter (after :meth:`finalize`)."""
        self._require_attached()
        out = {}
        for name, p in self._params.items():
            # after finalize() W is on the codebook: pack it with the alpha it was snapped with
            if name in self._snapped and bool((p.detach() == self._G[name]).all()):
                projected, alpha = p.detach(), self._snapped[name]
            else:
                projected, alpha = self.project(p.detach())
            out[name] = self._pack_projected(projected, alpha)
        return out

    def _require_attached(self) -> None:
        if not self._params:
            raise RuntimeError("Quantizer.attach(model) must be called first")


# ---------------------------------------------------------------------------- torch modules
_torch_classes: dict[str, Any] = {}


def _quantized_linear_class() -> Any:
    if "QuantizedLinear" not in _torch_classes:
        import torch

        class QuantizedLinear(torch.nn.Module):
            """Inference-only linear layer over packed power-of-two weights (shift matmul)."""

            def __init__(self, packed: PackedWeights, bias: Any = None):
                super().__init__()
                self.packed = packed
                self.in_features, self.out_features = packed.cols, packed.rows
                self.register_buffer("bias", None if bias is None else bias.detach().clone().float())

            def forward(self, x: Any) -> Any:
                y = shift_matmul(x.detach().float().contiguous(), self.packed)
                return y + self.bias if self.bias is not None else y

            def extra_repr(self) -> str:
                return f"in_features={self.in_features}, out_features={self.out_features}, codes=4-bit"

        _torch_classes["QuantizedLinear"] = QuantizedLinear
    return _torch_classes["QuantizedLinear"]


def quantize_module(model: Any, packed: dict[str, PackedWeights]) -> Any:
    """A copy of ``model`` whose ``nn.Linear`` layers named in ``packed`` (keys "<layer>.weight",
    as :meth:`Quantizer.export` returns) are replaced by QuantizedLinear, for inference."""
    import copy

    import torch

    cls = _quantized_linear_class()
    out = copy.deepcopy(model).eval()
    for name, mod in list(out.named_modules()):
        key = f"{name}.weight"
        if isinstance(mod, torch.nn.Linear) and key in packed:
            parent = out
            parts = name.split(".")
            for part in parts[:-1]:
                parent = getattr(parent, part)
            setattr(parent, parts[-1], cls(packed[key], mod.bias))
    return out


def __getattr__(name: str) -> Any:
    if name == "QuantizedLinear":
        return _quantized_linear_class()
    raise AttributeError(f"module 'sparsecore.quant' has no attribute {name!r}")


# -------------------------------------------------------------------------- row quantization
ROW_FORMATS = ("fp16", "int8", "int4")


class QuantizedRows:
    """Rows stored as fp16, int8 rowwise or int4 rowwise (scale + bias per row)."""

    def __init__(self, rows: Any, format: str = "int8"):
        if format not in ROW_FORMATS:
            raise ValueError(f"format must be one of {ROW_FORMATS}, got '{format}'")
        r = rows.detach().cpu().numpy() if is_torch(rows) else np.asarray(rows)
        if r.dtype != np.float32:
            raise TypeError(f"rows must have dtype float32, got {r.dtype}")
        if r.ndim != 2:
            raise ValueError(f"rows must be 2-D (n, dim), got shape {r.shape}")
        self.format, self.dim = format, int(r.shape[1])
        self.data = _core.quantize_rows(np.ascontiguousarray(r), format)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def dequantize(self) -> np.ndarray:
        return _core.dequantize_rows(self.data, self.dim, self.format)

    def pooled_lookup(self, indices: Any, offsets: Any, weights: Any = None, pooling: str = "sum") -> Any:
        """(B, dim) pooled rows of each bag; ``indices`` -1 reads as zeros. torch in, torch out."""
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got '{pooling}'")
        torch_out = is_torch(indices)
        idx = as_int64(indices, "indices")
        off = as_int64(offsets, "offsets")
        w = None
        if weights is not None:
            w = weights.detach().cpu().numpy() if is_torch(weights) else np.asarray(weights)
            if w.dtype != np.float32:
                raise TypeError(f"weights must have dtype float32, got {w.dtype}")
            w = np.ascontiguousarray(w)
        out = _core.pooled_lookup_quantized(self.data, self.dim, self.format, idx, off, w, pooling == "mean")
        return to_torch(out) if torch_out else out


def _refuse_insert(insert: bool) -> None:
    if insert:
        raise ValueError("a QuantizedEmbeddingTable is read-only: lookup(..., insert=True) cannot add rows; "
                         "insert into the EmbeddingCollection and quantize it again (from_collection)")


class QuantizedEmbeddingTable:
    """A read-only serving table: int64 keys to quantized rows. Unknown ids read as zeros."""

    def __init__(self, keys: Any, weights: Any, format: str = "int8"):
        k = as_int64(keys, "keys")
        order = np.argsort(k, kind="stable")
        self.keys = k[order]
        if len(self.keys) > 1 and np.any(self.keys[1:] == self.keys[:-1]):
            raise ValueError("keys must be unique")
        w = weights.detach().cpu().numpy() if is_torch(weights) else np.asarray(weights)
        if w.ndim != 2 or w.shape[0] != len(k):
            raise ValueError(f"weights must have shape ({len(k)}, dim), got {w.shape}")
        self.rows = QuantizedRows(np.ascontiguousarray(w[order]), format)

    @classmethod
    def from_collection(cls, collection: Any, name: str, format: str = "int8") -> "QuantizedEmbeddingTable":
        """Quantizes table ``name`` of an :class:`EmbeddingCollection` (its weights, not its state)."""
        exported = collection.export(name)
        return cls(exported["keys"], np.ascontiguousarray(exported["weights"]), format)

    def indices(self, ids: Any, *, insert: bool = False) -> np.ndarray:
        """Row index of each id, -1 where the id is absent. The table is read-only:
        ``insert`` (the switch of :meth:`EmbeddingCollection.lookup`) must stay False."""
        _refuse_insert(insert)
        i = as_int64(ids, "ids")
        if len(self.keys) == 0:
            return np.full(i.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, i), len(self.keys) - 1)
        return np.where(self.keys[pos] == i, pos, -1).astype(np.int64)

    def lookup(self, ids: Any, offsets: Any, weights: Any = None, pooling: str = "sum", *,
               insert: bool = False) -> Any:
        """(B, dim) pooled rows of the bags ``ids``/``offsets``; unknown ids read as zeros (the
        table is read-only: ``insert`` must stay False). torch in, torch out."""
        _refuse_insert(insert)
        torch_out = is_torch(ids)
        out = self.rows.pooled_lookup(self.indices(ids), offsets, weights, pooling)
        return to_torch(out) if torch_out else out

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + int(self.keys.nbytes)


__all__ = [
    "CODEBOOKS", "DevicePackedWeights", "PackedWeights", "QuantizedEmbeddingTable", "QuantizedRows", "Quantizer", "pack_pow2",
    "quantize_activations", "quantize_module", "shift_matmul",
]
