"""Memory of one W1 peer, measured in a process of its own (run by test_w1.py).

Builds the peer's tables holding every id of every table (sparsecore grows its hash tables
by inserting them; torch and fbgemm allocate fixed arrays), runs two training steps so that
lazily created optimizer state exists, and prints one JSON line:

  rows                 rows held (tables x vocab)
  bytes_per_row        resident memory added by the tables, per row, once built
  peak_bytes_per_row   the high-water mark of resident memory during the build, per row
                       (the transient peak while tables grow or initialise)
  engine_bytes_per_row sparsecore only: what the engine itself accounts for (index + rows)

Usage: SPARSECORE_BENCH_SCALE=full python bench/peak_memory.py --peer fbgemm --optimizer adagrad
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", required=True, choices=sorted(workload.PEERS))
    parser.add_argument("--optimizer", default="adagrad")
    args = parser.parse_args()

    workload.limit_threads()
    scale = workload.current_scale()
    batches = workload.make_batches(scale)
    if args.peer != "sparsecore":
        workload._torch()  # import torch before the baseline: its code is not table memory
    else:
        import sparsecore  # noqa: F401
    gc.collect()
    _reset_peak()
    base = _status_kib("VmRSS")

    peer = workload.make_peer(args.peer, args.optimizer, batches, scale.vocab, fill=True)
    for i in range(2):
        peer.step(i % len(batches))
    gc.collect()
    rss = _status_kib("VmRSS")
    hwm = _status_kib("VmHWM")
    rows = peer.rows() if isinstance(peer, workload.SparsecorePeer) else scale.tables * scale.vocab
    out = {
        "peer": args.peer, "optimizer": args.optimizer, "scale": scale.name, "rows": rows,
        "bytes_per_row": (rss - base) * 1024 / rows,
        "peak_bytes_per_row": (hwm - base) * 1024 / rows,
    }
    if isinstance(peer, workload.SparsecorePeer):
        out["engine_bytes_per_row"] = peer.emb.memory_bytes() / rows
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
