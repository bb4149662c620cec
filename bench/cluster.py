"""Worker scaling on loopback: W2 training steps of 1, 2 and 4 worker processes against 1 and 2
parameter-server processes, in synchronous, bounded-staleness (SSP, k = 2) and asynchronous
mode.

Each worker is its own process (its own interpreter, so workers run in parallel) that trains
the W2 model of test_w2.py - 23 feature groups of dim 18 on the servers, MLP 414-200-80-1
with torch Adam on the worker - on its own part of the W2 stream (the batch size is smaller
than the paper's 5000, so that a job fits this machine). After ``--warmup`` steps the workers
meet at a barrier and then time ``--steps`` steps each: per step the wall time of its pull
phase (``collection.pooled_rows``: the pull of every group's rows, one request per server
shard, and the pooling) and of its push phase (``collection.backward``: the per-id gradient
sums and the push; in sync mode it includes the wait for the other workers). SSP's hold of
a worker too far ahead falls in either. The job's samples/s is every timed sample over the time from
the first worker's start to the last worker's end. The servers' CPU seconds per key pulled
and pushed (every step) and the workers' CPU seconds per key in the pull and push calls
feed the model of docs/scaling.md.

    PYTHONPATH=python python3 bench/cluster.py                 # the table of bench/results/cluster.md
    PYTHONPATH=python python3 bench/cluster.py --workers 2 --servers 1 --modes ssp --steps 3

The machine's cores are shared (2 here): with 4 workers and 2 servers every process competes
for them, so the table shows contention, not the speed of a cluster; read medians and the
load average printed with them. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rpc_bench  # noqa: E402

DIM = 18
GROUPS = 23
MODES = {"sync": dict(mode="sync"), "ssp": dict(mode="ssp", staleness=2), "async": dict(mode="async")}


def worker_main(argv: list[str]) -> int:
    """One worker process: trains and prints its measurements as one JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("--addresses", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--mode", choices=sorted(MODES), required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--wire-dtype", default="float32")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import torch

    import sparsecore as sc
    from sparsecore.data import SyntheticConfig, SyntheticData
    from sparsecore.torch import mlp

    sc.set_num_threads(1)
    torch.set_num_threads(1)
    cfg = SyntheticConfig.w2(vocab_size=a.vocab, zipf_exponent=1.5, batch_size=a.batch)
    total = (a.warmup + a.steps) * a.batch
    start = a.rank * (1 << 32)  # each worker its own part of the stream
    batches = list(SyntheticData(cfg, start=start, num_samples=start + total))
    cluster = sc.connect(a.addresses.split(","), worker=a.rank, num_workers=a.workers, timeout=600,
                         wire_dtype=a.wire_dtype, **MODES[a.mode])
    names = cfg.names()
    opt = sc.Adam(lr=0.01, eps=1e-8, use_global_step=True)
    collection = sc.EmbeddingCollection({n: sc.TableConfig(dim=DIM, optimizer=opt) for n in names}, 0,
                                        server=cluster)
    torch.manual_seed(0)
    model = mlp(DIM * len(names), [200, 80])
    dense_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pulls: list[float] = []
    pushes: list[float] = []
    keys = 0
    cpu = {"prepare": 0.0, "pull": 0.0, "push": 0.0}
    wall = {"prepare": 0.0, "dense": 0.0}
    t_start = t_end = 0.0
    for i, batch in enumerate(batches):
        if i == a.warmup:
            cluster.barrier("timed", a.workers)
            t_start = time.time()
        tp, cp = time.perf_counter(), time.process_time()
        prepared = collection.prepare(batch.sparse, train=True)
        t0, c0 = time.perf_counter(), time.process_time()
        pooled = collection.pooled_rows(prepared)
        t1, c1 = time.perf_counter(), time.process_time()
        x = torch.from_numpy(np.concatenate(pooled, axis=1)).requires_grad_()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1),
                                                                    torch.from_numpy(batch.labels))
        dense_opt.zero_grad(set_to_none=True)
        loss.backward()
        dense_opt.step()
        grad = x.grad.numpy()
        grads = {n: np.ascontiguousarray(grad[:, j * DIM:(j + 1) * DIM]) for j, n in enumerate(names)}
        t2, c2 = time.perf_counter(), time.process_time()
        collection.backward(prepared, grads)
        t3, c3 = time.perf_counter(), time.process_time()
        keys += sum(np.unique(batch.sparse[n][0]).size for n in names)
        if i >= a.warmup:
            pulls.append(t1 - t0)
            pushes.append(t3 - t2)
            cpu["prepare"] += c0 - cp
            cpu["pull"] += c1 - c0
            cpu["push"] += c3 - c2
            wall["prepare"] += t0 - tp
            wall["dense"] += t2 - t1
    t_end = time.time()
    timed_keys = keys * a.steps / (a.warmup + a.steps)
    print(json.dumps({"rank": a.rank, "start": t_start, "end": t_end, "samples": a.steps * a.batch,
                      "pull_s": pulls, "push_s": pushes, "keys": keys,
                      "client_cpu_us_per_key_prepare": 1e6 * cpu["prepare"] / max(timed_keys, 1),
                      "client_cpu_us_per_key_pull": 1e6 * cpu["pull"] / max(timed_keys, 1),
                      "dense_us_per_sample": 1e6 * wall["dense"] / (a.steps * a.batch),
                      "client_cpu_us_per_key_push": 1e6 * cpu["push"] / max(timed_keys, 1),
                      "staleness": [s.get("staleness") for s in cluster.stats()]}), flush=True)
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_job(servers: int, workers: int, mode: str, *, steps: int, warmup: int, batch: int, vocab: int,
            wire_dtype: str = "float32") -> dict[str, Any]:
    """One job on fresh servers; its measurements (see the module's docstring)."""
    with ExitStack() as stack:
        procs = rpc_bench.sparsecore_server_processes(stack, servers, shards=1, threads=1)
        addresses = ",".join(p.endpoint for p in procs)
        cpu0 = sum(p.cpu_seconds() for p in procs)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--addresses", addresses,
               "--workers", str(workers), "--mode", mode, "--batch", str(batch), "--vocab", str(vocab),
               "--steps", str(steps), "--warmup", str(warmup), "--wire-dtype", wire_dtype]
        children = [subprocess.Popen(cmd + ["--rank", str(r)], stdout=subprocess.PIPE, text=True,
                                     env=rpc_bench.python_env()) for r in range(workers)]
        outs = []
        for c in children:
            out, _ = c.communicate(timeout=1800)
            if c.returncode != 0:
                raise RuntimeError(f"worker exited with {c.returncode}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
        server_cpu = sum(p.cpu_seconds() for p in procs) - cpu0
    pulls = [s for o in outs for s in o["pull_s"]]
    pushes = [s for o in outs for s in o["push_s"]]
    keys = sum(o["keys"] for o in outs)
    leads = [g["max_lead"] for o in outs for g in o["staleness"] if g]
    return {
        "servers": servers, "workers": workers, "mode": mode, "batch": batch, "steps": steps,
        "wire_dtype": wire_dtype,
        "samples_per_s": sum(o["samples"] for o in outs) / (max(o["end"] for o in outs) - min(o["start"] for o in outs)),
        "pull_ms_median": 1e3 * statistics.median(pulls), "pull_ms_p99": 1e3 * percentile(pulls, 0.99),
        "push_ms_median": 1e3 * statistics.median(pushes), "push_ms_p99": 1e3 * percentile(pushes, 0.99),
        # Every key is pulled once and pushed once per step: the servers' CPU over both.
        "server_cpu_us_per_key": 1e6 * server_cpu / max(2 * keys, 1),
        "client_cpu_us_per_key_prepare": statistics.median(o["client_cpu_us_per_key_prepare"] for o in outs),
        "client_cpu_us_per_key_pull": statistics.median(o["client_cpu_us_per_key_pull"] for o in outs),
        "dense_us_per_sample": statistics.median(o["dense_us_per_sample"] for o in outs),
        "client_cpu_us_per_key_push": statistics.median(o["client_cpu_us_per_key_push"] for o in outs),
        "keys_per_step_per_worker": keys / (workers * (steps + warmup)),
        "max_lead": max(leads) if leads else None,
    }


def markdown(results: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| servers | workers | mode | samples/s (job) | pull ms median / p99 | push ms median / p99 "
             "| server CPU µs/key | client CPU µs/key pull / push | max lead |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lead = "-" if r["max_lead"] is None else str(r["max_lead"])
        lines.append(f"| {r['servers']} | {r['workers']} | {r['mode']} | {r['samples_per_s']:,.0f} "
                     f"| {r['pull_ms_median']:.1f} / {r['pull_ms_p99']:.1f} "
                     f"| {r['push_ms_median']:.1f} / {r['push_ms_p99']:.1f} | {r['server_cpu_us_per_key']:.2f} "
                     f"| {r['client_cpu_us_per_key_pull']:.2f} / {r['client_cpu_us_per_key_push']:.2f} | {lead} |")
    return "\n".join(lines) + "\n"


# The projection of docs/scaling.md: its assumptions, in one place.
HOST_GBITS = 25.0          # every host's NIC, each direction
SERVER_CORES = 16          # a server host runs one shard (reactor) per core, all busy
WORKERS_PER_HOST = 16      # a worker is one process on one core; 16 share a host's NIC
REQUEST_CPU_US = 15.0      # fixed CPU per request on each side (syscalls, wakeup, framing): assumed
REQUEST_BYTES = 32 + 24 + GROUPS * (16 + 8)  # frame + tables header + one entry and name per group


def project(measured: dict[str, Any], workers: int, servers: int, wire_bytes: int = 4) -> dict[str, float]:
    """Samples/s of `workers` workers against `servers` server hosts from the per-key costs of
    one measured job (docs/scaling.md states the model and its assumptions)."""
    batch = measured["batch"]
    keys = measured["keys_per_step_per_worker"]
    shards = servers * SERVER_CORES
    pull_requests = shards * (1 - (1 - 1 / shards) ** keys)  # shards that own any of the keys
    requests = pull_requests + shards  # a push goes to every shard
    client_us = (keys * (measured["client_cpu_us_per_key_prepare"] + measured["client_cpu_us_per_key_pull"]
                         + measured["client_cpu_us_per_key_push"])
                 + batch * measured["dense_us_per_sample"] + requests * REQUEST_CPU_US)
    row = DIM * wire_bytes
    worker_out = keys * (8 + 8 + row) + requests * REQUEST_BYTES  # pull ids, push ids + gradients
    worker_in = keys * row
    nic = HOST_GBITS * 1e9 / 8  # bytes/s
    worker_net_us = 1e6 * max(worker_out, worker_in) / (nic / WORKERS_PER_HOST)
    server_us = workers * (2 * keys * measured["server_cpu_us_per_key"] + requests * REQUEST_CPU_US) / (
        servers * SERVER_CORES)
    server_net_us = 1e6 * workers * max(worker_out, worker_in) / servers / nic
    parts = {"worker CPU": client_us, "worker NIC": worker_net_us, "server CPU": server_us,
             "server NIC": server_net_us}
    step_us = max(parts.values())
    return {"samples_per_s": workers * batch / (step_us * 1e-6), "bound": max(parts, key=parts.get), **parts}


def projection_table(measured: dict[str, Any], counts: list[int]) -> str:
    lines = ["| workers \\ servers | " + " | ".join(str(s) for s in counts) + " |",
             "| ---: |" + " ---: |" * len(counts)]
    for w in counts:
        cells = []
        for s in counts:
            p = project(measured, w, s)
            cells.append(f"{p['samples_per_s'] / 1e6:,.2f} M ({p['bound']})")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["sync", "ssp", "async"])
    p.add_argument("--steps", type=int, default=10, help="timed steps per worker (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=1000, help="samples per worker step (W2's is 5000)")
    p.add_argument("--vocab", type=int, default=100_000)
    p.add_argument("--wire-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--project", metavar="JSON", help="print the projection of docs/scaling.md from the "
                   "1-server, 1-worker asynchronous job of a --json file, and exit")
    a = p.parse_args(argv)
    if a.project:
        results = json.loads(Path(a.project).read_text())
        base = next(r for r in results if r["servers"] == 1 and r["workers"] == 1 and r["mode"] == "async")
        print(projection_table(base, [10, 30, 100, 300, 1000]))
        return 0
    results = []
    load = [os.getloadavg()[0]]
    for servers in a.servers:
        for workers in a.workers:
            for mode in a.modes:
                r = run_job(servers, workers, mode, steps=a.steps, warmup=a.warmup, batch=a.batch, vocab=a.vocab,
                            wire_dtype=a.wire_dtype)
                load.append(os.getloadavg()[0])
                r["load_average"] = load[-1]
                results.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    header = (f"W2 (23 groups, dim 18, MLP 414-200-80-1), batch {a.batch} per worker step, {a.steps} timed steps "
              f"after {a.warmup}, wire {a.wire_dtype}, {os.cpu_count()} cores; 1-minute load average "
              f"{min(load):.2f}-{max(load):.2f} (median {statistics.median(load):.2f})")
    print(markdown(results, header))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
