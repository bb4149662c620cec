"""W2 end to end, sparsecore against pure PyTorch, with the rounds interleaved.

pytest-benchmark (test_w2.py) runs one case after another, so on a shared machine the load
that falls on one case misses the other. Here every case gets one round in turn (A, B, C, ...,
A, B, C, ...) on the same batches, after one warm-up round each, and the medians of the timed
rounds are compared within each workload:

- ``memory``: batches in memory (test_w2's ``sparsecore`` and ``pytorch`` cases), plus the
  minimal PyTorch loop of ``w2_torch_check.py`` written independently of the peer (the check
  that the peer does no extra work);
- ``files``: the same batches written once to a libffm file and read back with
  ``LibffmReader`` on both sides (test_w2's ``sparsecore-files`` and ``pytorch-files``), the
  reader's cost included.

Threads as in the bench: torch 2 intra-op threads and sparsecore's pool 2
(``OMP_WAIT_POLICY=PASSIVE``); the Trainer's pipeline thread prepares the next batch on its
own thread. Prints one markdown table: samples/s (median round), CPU ms per step (all threads
of the process, median round), the ratio to the PyTorch peer of the same workload, held-out
AUC, and the load average before and after.

    PYTHONPATH=python python3 bench/w2_ratio.py --optimizer adam
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402

workload.limit_threads()  # before torch is imported, as in the bench

import numpy as np  # noqa: E402
import torch  # noqa: E402

import sparsecore as sc  # noqa: E402
import test_w2  # noqa: E402
import w2_torch_check  # noqa: E402
from sparsecore.data import auc  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Minimal:
    """w2_torch_check's minimal loop behind the peers' train/evaluate interface."""

    def __init__(self, optimizer: str, dim: int):
        self.loop = w2_torch_check.MinimalLoop(optimizer, dim)

    def train(self, batches: list) -> None:
        self.loop.train([w2_torch_check.MinimalLoop.tensors(b) for b in batches])

    def evaluate(self, batches: list) -> dict[str, float]:
        labels, scores = [], []
        with torch.no_grad():
            for b in batches:
                groups, _ = w2_torch_check.MinimalLoop.tensors(b)
                pooled = torch.cat([bag(i, o) for bag, (i, o) in zip(self.loop.bags, groups)], dim=1)
                scores.append(self.loop.mlp(pooled).squeeze(1).numpy())
                labels.append(b.labels)
        return {"auc": auc(np.concatenate(labels), np.concatenate(scores))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--optimizer", choices=["adam", "adagrad"], default="adam")
    p.add_argument("--dim", type=int, default=18)
    p.add_argument("--workloads", nargs="+", choices=["memory", "files"], default=["memory", "files"])
    args = p.parse_args(argv)
    sc.set_num_threads(test_w2.THREADS)
    torch.set_num_threads(test_w2.THREADS)
    train, held_out = test_w2.w2_data(1)
    names = test_w2.w2_config(1).names()
    cases: dict[str, tuple[str, object]] = {}  # name -> (workload, peer)
    if "memory" in args.workloads:
        cases["sparsecore"] = ("memory", test_w2.SparsecorePeer(names, args.dim, args.optimizer))
        cases["pytorch"] = ("memory", test_w2.PyTorchPeer(names, args.dim, args.optimizer))
        cases["pytorch-minimal"] = ("memory", Minimal(args.optimizer, args.dim))
    if "files" in args.workloads:
        test_w2.w2_file()  # written before any timing
        cases["sparsecore-files"] = ("files", test_w2.FileSparsecorePeer(names, args.dim, args.optimizer))
        cases["pytorch-files"] = ("files", test_w2.FilePyTorchPeer(names, args.dim, args.optimizer))
    load_before = os.getloadavg()[0]
    chunks = [train[i:i + test_w2.STEPS] for i in range(0, len(train), test_w2.STEPS)]
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpus: dict[str, list[float]] = {k: [] for k in cases}
    for r, chunk in enumerate(chunks):
        for name, (_, peer) in cases.items():
            c0, t0 = cpu_seconds(), time.perf_counter()
            peer.train(chunk)
            if r >= test_w2.WARMUP:
                times[name].append(time.perf_counter() - t0)
                cpus[name].append(cpu_seconds() - c0)
    load_after = os.getloadavg()[0]
    samples = test_w2.STEPS * test_w2.BATCH
    rate = {k: samples / statistics.median(v) for k, v in times.items()}
    aucs = {k: peer.evaluate(held_out)["auc"] for k, (_, peer) in cases.items()}
    print(f"W2 {args.optimizer}, dim {args.dim}, batch {test_w2.BATCH}, {len(chunks) - test_w2.WARMUP} timed rounds "
          f"of {test_w2.STEPS} steps per case (interleaved), torch threads {torch.get_num_threads()}, sparsecore "
          f"threads {sc.num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {load_before:.2f} before, {load_after:.2f} after")
    print()
    print("| workload | case | samples/s (median) | CPU ms/step (median) | / pytorch | AUC | AUC - pytorch |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (work, _) in cases.items():
        base = "pytorch" if work == "memory" else "pytorch-files"
        cpu = 1e3 * statistics.median(cpus[name]) / test_w2.STEPS
        print(f"| {work} | {name} | {rate[name]:,.0f} | {cpu:.0f} | {rate[name] / rate[base]:.2f}x | "
              f"{aucs[name]:.4f} | {aucs[name] - aucs[base]:+.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
