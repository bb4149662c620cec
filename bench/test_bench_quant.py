"""Shift matmul beside float32 matmul (NumPy/OpenBLAS, torch) on the same machine.

Groups: GEMV (batch 1) at 1024^2 and 4096^2, GEMM at batch 64 and 256 (1024^2). The
sparsecore peers: float32 activations (the float kernels) and int8 activations (quantized per
call, then the fixed-point kernels: AVX-512 VNNI dot products where the CPU has them). Every case
rotates over the same number of weight matrices, enough that the fp32 set (640 MB at full
scale) is twice this machine's L3, so weights stream from memory; the packed set is 8x
smaller, which is the point. Model bytes fp32 vs packed go into extra_info. Run with one
thread for a like-for-like kernel comparison:
  SPARSECORE_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 pytest bench/test_bench_quant.py
SPARSECORE_BENCH_SCALE=tiny shrinks everything to a smoke test. The CUDA peer skips where
there is no device; bench/gpu_quant_check.py is the full GPU comparison (against cuBLAS).
"""

import os

import numpy as np
import pytest

import sparsecore as sc

TINY = os.environ.get("SPARSECORE_BENCH_SCALE") == "tiny"
ROTATION_BYTES = (8 << 20) if TINY else (640 << 20)  # fp32 bytes of the rotated matrices
SIZES = [64, 256] if TINY else [1024, 4096]
PEERS = ["numpy-fp32", "torch-fp32", "sparsecore-shift", "sparsecore-shift-int8", "sparsecore-shift-cuda"]


class Weights:
    """`count` random matrices in both forms, built once per shape."""

    def __init__(self, n, rng):
        self.n = n
        self.count = max(2, ROTATION_BYTES // (4 * n * n))
        self.fp32 = [rng.standard_normal((n, n), dtype=np.float32) for _ in range(self.count)]
        alpha = np.full(n, 0.01, np.float32)
        self.packed = []
        for _ in range(self.count):
            codes = rng.integers(0, 256, (n, n // 2), dtype=np.uint8)
            self.packed.append(sc.PackedWeights(codes, alpha, (n, n), "layer"))


_cache: dict[int, Weights] = {}


def weights(n):
    if n not in _cache:
        _cache.clear()  # one shape resident at a time
        _cache[n] = Weights(n, np.random.default_rng(n))
    return _cache[n]


def make_case(peer, w, x):
    state = {"i": 0}
    if peer == "numpy-fp32":
        mats = w.fp32
        xt = np.ascontiguousarray(x.T)

        def run():
            state["i"] = (state["i"] + 1) % w.count
            return mats[state["i"]] @ xt
    elif peer == "torch-fp32":
        torch = pytest.importorskip("torch")
        torch.set_num_threads(sc.num_threads())
        mats = [torch.from_numpy(m) for m in w.fp32]
        xt = torch.from_numpy(np.ascontiguousarray(x.T))

        def run():
            state["i"] = (state["i"] + 1) % w.count
            return mats[state["i"]] @ xt
    elif peer == "sparsecore-shift-cuda":
        # The CUDA kernels on a float32 CUDA tensor (no host round trip); the bench/gpu_quant_check.py
        # subprocess compares them with cuBLAS on the same GPU.
        torch = pytest.importorskip("torch")
        from sparsecore import cuda as sc_cuda

        if not (sc_cuda.is_available() and torch.cuda.is_available()):
            pytest.skip("skipped: no device")
        mats = [p.to_device() for p in w.packed]
        xd = torch.from_numpy(x).cuda()

        def run():
            state["i"] = (state["i"] + 1) % w.count
            y = sc.shift_matmul(xd, mats[state["i"]])
            torch.cuda.synchronize()
            return y
    elif peer == "sparsecore-shift-int8":
        # The fixed-point serving path end to end: float32 x quantized to int8 (one scale per
        # call), exact int32 sums of true shifts, scaled back to float32.
        mats = w.packed

        def run():
            state["i"] = (state["i"] + 1) % w.count
            q, scale = sc.quantize_activations(x)
            return sc.shift_matmul(q, mats[state["i"]], x_scale=scale)
    else:
        mats = w.packed

        def run():
            state["i"] = (state["i"] + 1) % w.count
            return sc.shift_matmul(x, mats[state["i"]])
    return run


def record(benchmark, w, batch):
    benchmark.extra_info.update({
        "fp32_bytes": 4 * w.n * w.n, "packed_bytes": w.packed[0].nbytes,
        "bytes_ratio": 4 * w.n * w.n / w.packed[0].nbytes, "matrices_rotated": w.count, "batch": batch,
        "threads": sc.num_threads(), "kernel": sc._core.shift_matmul_kernel(),
        "fixed_kernel": sc._core.shift_matmul_fixed_kernel(),
    })


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("n", SIZES)
def test_gemv(benchmark, peer, n):
    benchmark.group = f"quant-gemv-{n}x{n}"
    w = weights(n)
    x = np.random.default_rng().standard_normal((1, n), dtype=np.float32)
    record(benchmark, w, 1)
    benchmark(make_case(peer, w, x))


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("batch", [64, 256])
def test_gemm(benchmark, peer, batch):
    n = SIZES[0]
    benchmark.group = f"quant-gemm-b{batch}-{n}x{n}"
    w = weights(n)
    x = np.random.default_rng().standard_normal((batch, n), dtype=np.float32)
    record(benchmark, w, batch)
    benchmark(make_case(peer, w, x))


def test_shift_gemv_agrees_with_fp32_of_the_same_codes():
    w = weights(SIZES[0])
    x = np.random.default_rng().standard_normal((3, w.n), dtype=np.float32)
    dense = w.packed[0].dequantize()
    np.testing.assert_allclose(sc.shift_matmul(x, w.packed[0]), x @ dense.T, rtol=1e-4, atol=1e-3)
