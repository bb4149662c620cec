"""Emulated CUDA counters of one W1-shaped training step: the emulator as a performance
witness. The emulator's times say nothing about a GPU; what the step asks of a device does:
kernel launches, host synchronisations (each a round trip that stalls the host) and bytes
over the bus.

Builds W1's tables (26 tables, dim 16, Adagrad; bench/workload.py) in an emulated
DeviceEmbeddingCollection, runs one step on a W1-shaped batch (1-20 ids per bag, Zipf(1.1)
ids scattered by the fixed permutation; batch 256 by default) so that its ids exist, then
counts one steady-state step on the same batch, phase by phase (prepare, forward, backward;
NumPy arrays in and out). One JSON object on stdout; --markdown prints a table instead.

Bytes: the emulator cannot see a kernel's memory traffic, so the device bytes of the step are
modelled per kernel from its access pattern (MODEL below: what each launch reads and writes,
as a function of the batch's ids N, unique ids U, bags B, radix chunks C, dim and optimizer
state), counted with the launches the emulator saw, and reported per unique key against the
floor a step cannot go below: each unique row read once and written once, plus its key
(2 x row + key, the row being weights, optimizer state, update count and last step).

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


RADIX_CHUNK = 32  # positions per radix chunk (csrc/cuda/radix_sort_kernels.cuh)
RADIX_BINS = 16
SCAN_TILE = 64 * 4  # the emulated collection's 64 threads x 4 items per scan tile


def scan_bytes(m: int) -> int:
    return 8 * m  # read and write m ints


def model(sizes: dict) -> dict:
    """Device bytes (read + written) of one launch of each kernel, fp32 rows."""
    n, u, b, c, d, s = (sizes[k] for k in ("ids", "unique", "bags", "chunks", "dim", "state_dim"))
    hist = RADIX_BINS * c
    return {
        "batch_dedup_insert_kernel": 8 * n + 4 * n + 4 * u + 8 * n,  # ids, set probes, claims, slot per id
        "mark_first_kernel": 8 * n + 4 * n + 4 * n,
        "scan_tiles_kernel": None,  # per scan, below
        "scan_tile_sums_kernel": None,
        "batch_dedup_finish_kernel": 4 * n + 8 * n + 4 * n + 4 * n + 8 * u + 8 * u,
        "batch_lookup_kernel<TableDesc<T>>": 8 * u + 8 * u + 8 * u + 4 * u,  # keys, probed key, slot, flag
        "batch_init_rows_kernel<T>": 4 * u + 8 * u,  # steady state: no row is new
        "batch_bag_layout_kernel": 8 * (b + 1) + 4 * n + 4 * b,
        "batch_radix_histogram_kernel": 4 * n + 4 * hist,
        "batch_radix_scatter_kernel": 4 * n + 4 * n + 4 * hist + 8 * n,
        "occurrence_bounds_kernel": 8 * n + 4 * u,
        "pool_kernel<T>": 4 * n + 8 * n + 4 * d * n + 8 * (b + 1) + 4 * d * b,  # inverse, slot, row per id
        # per sorted occurrence: its position, unique index and run bounds (is it a chunk start?);
        # per occurrence of a chunk: bag, scale, gradient row; the sums written per id
        "unique_grad_kernel": 16 * n + 12 * n + 4 * d * n + 4 * d * u,
        # slot, run bounds (a long list also reads its further chunk sums: a few ids), gradient, row
        # read and written, count and last step
        "update_rows_kernel<T>": 8 * u + 8 * u + 4 * d * u + 2 * u * (4 * d + 4 * s + 4) + 8 * u,
    }


def modelled_bytes(sizes: dict, kernel_launches: dict) -> dict:
    per_launch = model(sizes)
    total, unmodelled = 0, []
    scans = [sizes["ids"]] + [RADIX_BINS * sizes["chunks"]] * kernel_launches.get("batch_radix_scatter_kernel", 0)
    for name, launches in kernel_launches.items():
        if name in ("scan_tiles_kernel", "scan_tile_sums_kernel"):
            continue
        if per_launch.get(name) is None:
            unmodelled.append(name)
            continue
        total += per_launch[name] * launches
    total += sum(scan_bytes(m) + scan_bytes(-(-m // SCAN_TILE)) for m in scans)
    row = 4 * sizes["dim"] + 4 * sizes["state_dim"] + 4 + 8  # weights, state, update count, last step
    floor = 2 * row + 8
    u = max(sizes["unique"], 1)
    return {"modelled_bytes": total, "bytes_per_key": round(total / u, 1), "floor_bytes_per_key": floor,
            "over_floor": round(total / u / floor, 2), "unmodelled_kernels": unmodelled}


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
    sizes = {"ids": ids, "unique": unique, "bags": sum(int(o.size) - 1 for _, o in batch.values()),
             "chunks": sum(-(-int(i.size) // RADIX_CHUNK) for i, _ in batch.values()), "dim": DIM, "state_dim": DIM}
    return {"tables": tables, "batch_size": batch_size, "ids": ids, "unique_ids": unique,
            "step": step, "per_group": {f: step[f] / tables for f in ("launches", "host_syncs")},
            "phases": {name: {f: p[f] for f in FIELDS} for name, p in phases.items()},
            "kernel_launches": dict(sorted(kernels.items(), key=lambda kv: -kv[1])),
            "bytes": modelled_bytes(sizes, kernels)}


def markdown(r: dict) -> str:
    lines = [f"W1-shaped step, emulated: {r['tables']} tables, batch {r['batch_size']}, {r['ids']} ids "
             f"({r['unique_ids']} unique)", "",
             "| phase | " + " | ".join(FIELDS) + " |", "| --- |" + " --- |" * len(FIELDS)]
    for name, p in list(r["phases"].items()) + [("step", r["step"])]:
        lines.append(f"| {name} | " + " | ".join(str(p[f]) for f in FIELDS) + " |")
    lines += ["", "| kernel | launches per step |", "| --- | --- |"]
    lines += [f"| `{k}` | {v} |" for k, v in r["kernel_launches"].items()]
    b = r["bytes"]
    lines += ["", "| modelled device bytes | per unique key | floor per key (2 x row + key) | over the floor |",
              "| --- | --- | --- | --- |",
              f"| {b['modelled_bytes']} | {b['bytes_per_key']} | {b['floor_bytes_per_key']} | {b['over_floor']}x |"]
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
