"""Export of a delta of 1M changed rows (dim 18) to local disk: GB/s, median of repeats.

The table holds 1M rows inserted since the last export (lookup with insert stamps them after
it), so ``export_delta`` writes every row: keys (8 MB) and weights (72 MB in fp32), each
file fsynced, the manifest last, then one rename. Each repeat writes into a fresh stream
directory that is removed afterwards (outside the timing).

Usage: python bench/online_export.py [--rows N] [--repeats K] [--dir PATH] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import sparsecore as sc


def export_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def make_collection(rows: int, dim: int) -> sc.EmbeddingCollection:
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=dim, optimizer=sc.SGD(lr=0.1))}, seed=1)
    for lo in range(0, rows, 1 << 18):
        emb.lookup("t", np.arange(lo, min(rows, lo + (1 << 18)), dtype=np.int64), insert=True)
    return emb


def export_once(emb: sc.EmbeddingCollection, root: Path, dtype: str) -> tuple[float, float, int]:
    """Wall seconds, process CPU seconds (every thread) and bytes of one export_delta."""
    stream = Path(tempfile.mkdtemp(prefix=f"export-{dtype}-", dir=root))
    c0, t0 = time.process_time(), time.perf_counter()
    emb.export_delta(stream, since=0, dtype=dtype)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    size = export_bytes(stream)
    shutil.rmtree(stream)
    return wall, cpu, size


def ceiling_once(root: Path, data: bytes) -> float:
    """Seconds to write `data` to one file and fsync it: what the disk allows."""
    path = root / "ceiling"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=18)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    p.add_argument("--out", default=None, help="write the Markdown report here")
    args = p.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="sparsecore-export-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    lines = ["| dtype | rows | bytes written | median s | GB/s | CPU s per export | time / ceiling's |",
             "|---|---|---|---|---|---|---|"]
    load_before = os.getloadavg()
    emb = make_collection(args.rows, args.dim)
    dtypes = ("fp32", "fp16", "int8")
    ceiling_bytes = args.rows * (8 + 4 * args.dim)
    data = np.random.default_rng(0).integers(0, 255, ceiling_bytes, dtype=np.uint8).tobytes()
    walls = {d: [] for d in dtypes}
    cpus = {d: [] for d in dtypes}
    sizes = {}
    ceiling = []
    export_once(emb, root, "fp32")  # warm-up: the exporter's buffers are paged in once
    # Every kind once per round, the disk's ceiling too: all see the same load.
    for _ in range(args.repeats):
        for d in dtypes:
            wall, cpu, sizes[d] = export_once(emb, root, d)
            walls[d].append(wall)
            cpus[d].append(cpu)
        ceiling.append(ceiling_once(root, data))
    for d in dtypes:
        t = statistics.median(walls[d])
        ratio = statistics.median(w / c for w, c in zip(walls[d], ceiling))  # same round, same load
        lines.append(f"| {d} | {args.rows:,} | {sizes[d]:,} | {t:.3f} | {sizes[d] / t / 1e9:.2f} | "
                     f"{statistics.median(cpus[d]):.3f} | {ratio:.2f} |")
        print(lines[-1], flush=True)
    c = statistics.median(ceiling)
    lines.append(f"| raw write + fsync of one file (the disk's ceiling) | - | {ceiling_bytes:,} | {c:.3f} | "
                 f"{ceiling_bytes / c / 1e9:.2f} | - | 1 |")
    print(lines[-1], flush=True)
    load_after = os.getloadavg()
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    report = "\n".join([
        "# Incremental export: a delta of 1M changed rows to local disk",
        "",
        f"`python bench/online_export.py --repeats {args.repeats}`: `export_delta` of {args.rows:,} changed rows "
        f"of dim {args.dim}, median of {args.repeats} rounds (each exports every dtype once and writes the "
        f"ceiling's file once, after one warm-up export), sparsecore threads {sc.num_threads()}. "
        "Bytes are everything the export leaves on disk (keys, rows, manifest); the time covers collecting the "
        "rows, encoding, writing, fsync of every file and directory, and the rename. CPU is the process's "
        "(every thread) per export, steadier than wall time on a loaded machine; time / ceiling's is the median "
        "over rounds of the export's time over the ceiling's write of the same round.",
        "",
        *lines,
        "",
        f"Load average (1, 5, 15 min) before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
        f"after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}.",
        "",
    ])
    if args.out:
        Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
