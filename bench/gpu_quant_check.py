"""CUDA shift matmul on a real GPU (bench/gpu_check.sh calls it after the CUDA tests).

First checks the kernels against the CPU shift matmul on the device (GEMV and tiled GEMM,
odd shapes, int8 fixed point exactly), then times y = x @ W.T for W of 1024^2 and 4096^2 at
batch 1 (GEMV), 64 and 256 (GEMM): sparsecore's 4-bit shift kernels on float32 CUDA tensors
(read in place on torch's stream) beside torch float32 and float16 matmul (cuBLAS) on the
same GPU. Every case rotates over enough matrices (512 MB of fp32) that weights stream from
HBM rather than L2. Reports medians of repeated timed loops, the ratio to torch fp32 and the
achieved weight bandwidth. One JSON object on stdout (a table on stderr); exit 1 when a
correctness check fails, 0 with {"skipped": reason} where there is no GPU.

  PYTHONPATH=python python3 bench/gpu_quant_check.py
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

ROTATION_BYTES = 512 << 20
REPEATS = 7
CALLS_PER_REPEAT = 50


def check_correctness(sc, torch, rng) -> list[str]:
    """Device results against the CPU kernels; returns the failures."""
    failures = []
    for batch, rows, cols in [(1, 1, 1), (1, 33, 8), (3, 65, 257), (4, 64, 32), (70, 130, 96), (256, 1000, 1024)]:
        codes = rng.integers(0, 256, (rows, (cols + 1) // 2), dtype=np.uint8)
        if cols % 2:
            codes[:, -1] &= 0x0F
        packed = sc.PackedWeights(codes, rng.uniform(0.01, 2, rows).astype(np.float32), (rows, cols))
        dev = packed.to_device()
        x = rng.standard_normal((batch, cols)).astype(np.float32)
        want = sc.shift_matmul(x, packed)
        got_host = sc.shift_matmul(x, dev)
        got_cuda = sc.shift_matmul(torch.from_numpy(x).cuda(), dev).cpu().numpy()
        tol = 1e-5 * (np.abs(x) @ np.abs(packed.dequantize()).T) + 1e-30
        for name, got in (("host", got_host), ("cuda tensor", got_cuda)):
            if not np.all(np.abs(got - want) <= tol):
                failures.append(f"float {name} batch {batch} ({rows}, {cols}): max err {np.max(np.abs(got - want))}")
        xi = rng.integers(-127, 128, (batch, cols)).astype(np.int8)
        if not np.array_equal(sc.shift_matmul(xi, dev), sc.shift_matmul(xi, packed)):
            failures.append(f"int8 batch {batch} ({rows}, {cols}) differs from the CPU")
    return failures


def median_call_seconds(fn, torch, count: int) -> float:
    for i in range(count):  # warm-up: one pass over the rotation
        fn(i)
    torch.cuda.synchronize()
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for i in range(CALLS_PER_REPEAT):
            fn(i % count)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / CALLS_PER_REPEAT)
    return float(np.median(times))


def main() -> int:
    try:
        import torch
    except ImportError:
        print(json.dumps({"skipped": "torch is not installed"}))
        return 0
    import sparsecore as sc
    from sparsecore import cuda as sc_cuda

    if not torch.cuda.is_available() or not sc_cuda.is_available():
        print(json.dumps({"skipped": f"no device ({sc_cuda.unavailable_reason() or 'torch sees no GPU'})"}))
        return 0
    rng = np.random.default_rng(2024)
    failures = check_correctness(sc, torch, rng)
    results = []
    for n in (1024, 4096):
        count = max(2, ROTATION_BYTES // (4 * n * n))
        fp32 = [torch.randn(n, n, device="cuda") for _ in range(count)]
        fp16 = [m.half() for m in fp32]
        alpha = np.full(n, 0.01, np.float32)
        shift = [sc.PackedWeights(rng.integers(0, 256, (n, n // 2), dtype=np.uint8), alpha, (n, n), "layer").to_device()
                 for _ in range(count)]
        for batch in (1, 64, 256):
            x = torch.randn(batch, n, device="cuda")
            xh = x.half()
            cases = {
                "torch-fp32": lambda i: x @ fp32[i].T,  # noqa: F821 (deleted after the loop)
                "torch-fp16": lambda i: xh @ fp16[i].T,  # noqa: F821
                "sparsecore-shift": lambda i: sc.shift_matmul(x, shift[i]),  # noqa: F821
            }
            times = {name: median_call_seconds(fn, torch, count) for name, fn in cases.items()}
            bytes_read = {"torch-fp32": 4 * n * n, "torch-fp16": 2 * n * n, "sparsecore-shift": n * n // 2 + 4 * n}
            for name, t in times.items():
                results.append({
                    "shape": f"{n}x{n}", "batch": batch, "peer": name, "median_us": t * 1e6,
                    "speedup_vs_torch_fp32": times["torch-fp32"] / t,
                    "weight_GBps": bytes_read[name] / t / 1e9, "matrices_rotated": count,
                })
        del fp32, fp16, shift
        torch.cuda.empty_cache()
    print(f"{'shape':>10} {'batch':>5} {'peer':>18} {'median us':>10} {'vs fp32':>8} {'weight GB/s':>12}", file=sys.stderr)
    for r in results:
        print(f"{r['shape']:>10} {r['batch']:>5} {r['peer']:>18} {r['median_us']:>10.2f} "
              f"{r['speedup_vs_torch_fp32']:>8.2f} {r['weight_GBps']:>12.1f}", file=sys.stderr)
    for f in failures:
        print(f"gpu_quant_check: FAILED {f}", file=sys.stderr)
    print(json.dumps({"device": torch.cuda.get_device_name(), "failures": failures, "results": results}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
