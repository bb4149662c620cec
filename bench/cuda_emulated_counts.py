"""Emulated CUDA counters of one W1-shaped training step: the emulator as a performance
witness. The emulator's times say nothing about a GPU; what the step asks of a device does:
kernel launches, host synchronisations (each a round trip that stalls the host) and bytes
over the bus.

Builds W1's tables (26 tables, dim 16, Adagrad; bench/workload.py) in an emulated
DeviceEmbeddingCollection, runs one step on a W1-shaped batch (1-20 ids per bag, Zipf(1.1)
ids scattered by the fixed permutation; batch 256 by default) so that its ids exist, then
counts one steady-state step on the same batch, phase by phase (prepare, forward, backward;
NumPy arrays in and out). One JSON object on stdout; --markdown prints a table instead.

  PYTHONPATH=python python3 bench/cuda_emulated_counts.py [--batch 256] [--tables 26] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workload import ADAGRAD_EPS, ADAGRAD_LR, DIM, Scale, make_batches  # noqa: E402

FIELDS = ("launches", "host_syncs", "h2d_copies", "h2d_bytes", "d2h_copies", "d2h_bytes", "d2d_bytes",
          "memsets")


def count_step(batch_size: int, tables: int) -> dict:
    import sparsecore as sc
    from sparsecore import cuda as sc_cuda

    batches = make_batches(Scale("emulated", tables=tables, vocab=1_000_000, batch_size=batch_size, num_batches=1,
                                 rounds=1, first_pass_steps=1))
    configs = {n: sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=ADAGRAD_LR, eps=ADAGRAD_EPS)) for n in batches.names}
    emb = sc_cuda.DeviceEmbeddingCollection(configs, 1, emulate=True)
    batch, grads = batches.sparse[0], batches.grads[0]
    emb.backward(emb.prepare(batch), grads)  # first pass: inserts the batch's ids

    phases = {}
    sc_cuda.reset_emulator_counters()
    prepared = emb.prepare(batch)
    phases["prepare"] = sc_cuda.emulator_counters()
    sc_cuda.reset_emulator_counters()
    emb.forward(prepared)
    phases["forward"] = sc_cuda.emulator_counters()
    sc_cuda.reset_emulator_counters()
    emb.backward(prepared, grads)
    phases["backward"] = sc_cuda.emulator_counters()

    step = {f: sum(p[f] for p in phases.values()) for f in FIELDS}
    kernels: dict[str, int] = {}
    for p in phases.values():
        for name, k in p["kernels"].items():
            kernels[name] = kernels.get(name, 0) + k["launches"]
    ids = sum(int(ids.size) for ids, _ in batch.values())
    unique = sum(int(prepared._core.num_unique(g)) for g in range(len(batch)))
    return {"tables": tables, "batch_size": batch_size, "ids": ids, "unique_ids": unique,
            "step": step, "per_group": {f: step[f] / tables for f in ("launches", "host_syncs")},
            "phases": {name: {f: p[f] for f in FIELDS} for name, p in phases.items()},
            "kernel_launches": dict(sorted(kernels.items(), key=lambda kv: -kv[1]))}


def markdown(r: dict) -> str:
    lines = [f"W1-shaped step, emulated: {r['tables']} tables, batch {r['batch_size']}, {r['ids']} ids "
             f"({r['unique_ids']} unique)", "",
             "| phase | " + " | ".join(FIELDS) + " |", "| --- |" + " --- |" * len(FIELDS)]
    for name, p in list(r["phases"].items()) + [("step", r["step"])]:
        lines.append(f"| {name} | " + " | ".join(str(p[f]) for f in FIELDS) + " |")
    lines += ["", "| kernel | launches per step |", "| --- | --- |"]
    lines += [f"| `{k}` | {v} |" for k, v in r["kernel_launches"].items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tables", type=int, default=26)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    result = count_step(args.batch, args.tables)
    print(markdown(result) if args.markdown else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
