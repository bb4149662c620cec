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


def run(rows: int, dim: int, repeats: int, root: Path, dtype: str) -> tuple[float, int]:
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=dim, optimizer=sc.SGD(lr=0.1))}, seed=1)
    for lo in range(0, rows, 1 << 18):
        emb.lookup("t", np.arange(lo, min(rows, lo + (1 << 18)), dtype=np.int64), insert=True)
    times, size = [], 0
    for r in range(repeats):
        stream = Path(tempfile.mkdtemp(prefix=f"export-{r}-", dir=root))
        t0 = time.perf_counter()
        emb.export_delta(stream, since=0, dtype=dtype)
        times.append(time.perf_counter() - t0)
        size = export_bytes(stream)
        shutil.rmtree(stream)
    return statistics.median(times), size


def disk_ceiling(root: Path, size: int, repeats: int) -> float:
    """Median seconds to write `size` bytes to one file and fsync it: what the disk allows."""
    data = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8).tobytes()
    times = []
    for r in range(repeats):
        path = root / f"ceiling-{r}"
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - t0)
        path.unlink()
    return statistics.median(times)


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
    lines = ["| dtype | rows | bytes written | median s | GB/s |", "|---|---|---|---|---|"]
    load_before = os.getloadavg()
    for dtype in ("fp32", "fp16", "int8"):
        t, size = run(args.rows, args.dim, args.repeats, root, dtype)
        lines.append(f"| {dtype} | {args.rows:,} | {size:,} | {t:.3f} | {size / t / 1e9:.2f} |")
        print(lines[-1], flush=True)
    ceiling_bytes = args.rows * (8 + 4 * args.dim)
    ceiling = disk_ceiling(root, ceiling_bytes, args.repeats)
    lines.append(f"| raw write + fsync of one file (the disk's ceiling) | - | {ceiling_bytes:,} | {ceiling:.3f} | "
                 f"{ceiling_bytes / ceiling / 1e9:.2f} |")
    print(lines[-1], flush=True)
    load_after = os.getloadavg()
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    report = "\n".join([
        "# Incremental export: a delta of 1M changed rows to local disk",
        "",
        f"`python bench/online_export.py --repeats {args.repeats}`: `export_delta` of {args.rows:,} changed rows "
        f"of dim {args.dim}, median of {args.repeats} repeats, sparsecore threads {sc.num_threads()}. "
        "Bytes are everything the export leaves on disk (keys, rows, manifest); the time covers collecting the "
        "rows, encoding, writing, fsync of every file and directory, and the rename.",
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
