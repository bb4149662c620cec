"""Shift matmul against NumPy fp32, the two peers interleaved call by call (numpy, shift, numpy,
shift, ...) on the rotated weight sets of bench/test_bench_quant.py, so that both see the same
load on a shared machine. Prints a markdown table of medians (wall time and thread CPU time,
which leaves out the time other processes hold the core) and the load average.

  SPARSECORE_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=python python3 bench/quant_ratios.py
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import sparsecore as sc  # noqa: E402
from test_bench_quant import make_case, weights  # noqa: E402

CASES = [("GEMV 1024×1024", 1024, 1, 2000), ("GEMV 4096×4096", 4096, 1, 300),
         ("GEMM b64, 1024×1024", 1024, 64, 150), ("GEMM b256, 1024×1024", 1024, 256, 40)]


def timed(fn):
    w, c = time.perf_counter_ns(), time.thread_time_ns()
    fn()
    return (time.perf_counter_ns() - w) / 1e6, (time.thread_time_ns() - c) / 1e6


def main():
    load = [os.getloadavg()]
    print(f"kernel {sc._core.shift_matmul_kernel()}, threads {sc.num_threads()}")
    print("| workload | numpy fp32 ms (wall / cpu) | shift ms (wall / cpu) | shift vs numpy, wall | cpu |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, n, batch, calls in CASES:
        w = weights(n)
        x = np.random.default_rng(batch).standard_normal((batch, n), dtype=np.float32)
        peers = [make_case("numpy-fp32", w, x), make_case("sparsecore-shift", w, x)]
        for p in peers:
            for _ in range(3):
                p()
        t = np.array([[timed(p) for p in peers] for _ in range(calls)])  # (calls, peer, wall|cpu)
        med = np.median(t, axis=0)
        print(f"| {name} | {med[0, 0]:.3f} / {med[0, 1]:.3f} | {med[1, 0]:.3f} / {med[1, 1]:.3f} | "
              f"{med[0, 0] / med[1, 0]:.2f}× | {med[0, 1] / med[1, 1]:.2f}× |", flush=True)
    load.append(os.getloadavg())
    print("load average before / after: " + " / ".join(", ".join(f"{v:.1f}" for v in la) for la in load))


if __name__ == "__main__":
    main()
