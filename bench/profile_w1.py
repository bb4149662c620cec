"""One W1 case of one peer in a loop, for profilers (``perf record -g -- python bench/profile_w1.py``)
and quick before/after checks while tuning. Prints the median time per call of each
repetition block; no peers side by side (that is test_w1.py's job).

    SPARSECORE_BENCH_SCALE=full python bench/profile_w1.py --kind eval --seconds 20
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402

workload.limit_threads()

log = logging.getLogger("profile_w1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", default="sparsecore", choices=sorted(workload.PEERS))
    ap.add_argument("--optimizer", default="adagrad", choices=["adagrad", "rowwise_adagrad", "sgd", "adam"])
    ap.add_argument("--kind", default="step", choices=["step", "eval", "forward-train"])
    ap.add_argument("--seconds", type=float, default=10.0, help="time spent in the measured loop")
    ap.add_argument("--ready-file", help="touched once the tables are filled (attach a profiler then)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    scale = workload.current_scale()
    batches = workload.make_batches(scale)
    t0 = time.perf_counter()
    peer = workload.make_peer(args.peer, args.optimizer, batches, scale.vocab)
    log.info("%s/%s at scale %s: tables ready in %.1f s", args.peer, args.optimizer, scale.name,
             time.perf_counter() - t0)
    if args.kind == "step":
        def call(i: int) -> None:
            peer.step(i)
    else:
        train = args.kind == "forward-train"

        def call(i: int) -> None:
            peer.forward(i, train)

    for i in range(len(batches)):  # warm-up: every batch once
        call(i)
    if args.ready_file:
        Path(args.ready_file).touch()
    times: list[float] = []
    cpu: list[float] = []  # all threads of the process: steadier than wall time on a shared machine
    end = time.perf_counter() + args.seconds
    i = 0
    while time.perf_counter() < end:
        t, c = time.perf_counter(), time.process_time()
        call(i % len(batches))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        i += 1
    ids = sum(batches.ids_per_batch) / len(batches)
    med = statistics.median(times)
    log.info("%s %s: %d calls, median %.2f ms (cpu %.2f ms), %.2fM lookups/s", args.kind, args.optimizer,
             len(times), med * 1e3, statistics.median(cpu) * 1e3, ids / med / 1e6)


if __name__ == "__main__":
    main()
