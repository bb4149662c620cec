"""Where a W2 training step's time goes, embedded and against local parameter servers.

The step of the Trainer, written out sequentially with the public API (no prefetch thread, so
every phase is timed on its own) on the W2 batches, MLP and hyperparameters of test_w2.py:

    prepare     collection.prepare(batch)          embedded: validate, dedup, lookup-or-insert
    pooled      collection.pooled_rows(prepared)   cluster: pull (Cluster.lookup) + pooling
    dense       MLP forward + backward + Adam step
    backward    collection.backward(prepared, g)   embedded: fused update; cluster: per-id sums + push

Inside ``pooled`` and ``backward`` the time spent in ``Cluster.lookup`` and ``Cluster.push``
(the RPCs, the client's dedup and scatter included) is timed apart when the collection calls
them. Per step it also counts the servers' pull and push requests (their stats), the bytes on
the loopback connections to the servers (``ss -ti``: bytes_sent/bytes_received of this
process's sockets), and the CPU seconds of the worker and of each server process.

    PYTHONPATH=python python3 bench/profile_w2_cluster.py --servers 0 1 2 --optimizer adam --steps 20

On a shared machine compare CPU seconds and the split between phases, not wall time alone.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402

workload.limit_threads()  # before torch is imported, as in the bench

import numpy as np  # noqa: E402
import torch  # noqa: E402

import rpc_bench  # noqa: E402
import sparsecore as sc  # noqa: E402
import test_w2  # noqa: E402

def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def socket_bytes(ports: list[int]) -> tuple[int, int]:
    """(bytes sent, bytes received) over the established connections to ``ports`` on loopback
    as the client sees them; (0, 0) when ``ss`` does not report byte counts."""
    if not ports:
        return 0, 0
    try:
        out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0, 0
    sent = received = 0
    lines = out.splitlines()
    wanted = {f"127.0.0.1:{p}" for p in ports}
    for header, detail in zip(lines[::2], lines[1::2]):  # one line per socket, then its tcp_info
        cols = header.split()  # Recv-Q Send-Q Local Peer: this process's side has the server as peer
        if len(cols) >= 4 and cols[3] in wanted:
            s = re.search(r"bytes_sent:(\d+)", detail)
            r = re.search(r"bytes_received:(\d+)", detail)
            sent += int(s.group(1)) if s else 0
            received += int(r.group(1)) if r else 0
    return sent, received


class Timed:
    """Wraps a bound method; accumulates its wall time and calls."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def profile(servers: int, optimizer: str, steps: int, warmup: int, server_threads: int) -> dict[str, Any]:
    sc.set_num_threads(test_w2.THREADS)
    torch.set_num_threads(test_w2.THREADS)
    train, _ = test_w2.w2_data(1)
    batches = [train[i % len(train)] for i in range(warmup + steps)]
    names = test_w2.w2_config(1).names()
    dim = 18
    opt = (sc.Adam(lr=test_w2.SPARSE_LR["adam"], eps=test_w2.EPS["adam"], use_global_step=True)
           if optimizer == "adam" else sc.Adagrad(lr=test_w2.SPARSE_LR["adagrad"], eps=test_w2.EPS["adagrad"]))
    tables = {n: sc.TableConfig(dim=dim, optimizer=opt) for n in names}
    with ExitStack() as stack:
        procs = rpc_bench.sparsecore_server_processes(stack, servers, shards=server_threads,
                                                      threads=server_threads) if servers else []
        cluster = sc.connect([p.endpoint for p in procs], timeout=120) if servers else None
        if cluster is not None:
            cluster.lookup = Timed(cluster.lookup)  # type: ignore[method-assign]
            cluster.push = Timed(cluster.push)  # type: ignore[method-assign]
        collection = sc.EmbeddingCollection(tables, 0, server=cluster) if cluster else sc.EmbeddingCollection(tables, 0)
        model = test_w2.dense_model(dim * len(names))
        dense_opt = torch.optim.Adam(model.parameters(), lr=test_w2.DENSE_LR)
        phases: dict[str, float] = defaultdict(float)
        start: dict[str, float] = {}
        for i, batch in enumerate(batches):
            if i == warmup:  # counters from here on
                phases.clear()
                if cluster is not None:
                    for timed in (cluster.lookup, cluster.push):
                        timed.seconds, timed.calls = 0.0, 0
                    stats = cluster.stats()
                    start["pulls"] = sum(s["pull_requests"] for s in stats)
                    start["pushes"] = sum(s["push_requests"] for s in stats)
                start["sent"], start["received"] = socket_bytes([p.port for p in procs])
                start["servers_cpu"] = sum(p.cpu_seconds() for p in procs)
                start["cpu"], start["wall"] = self_cpu_s(), time.perf_counter()
            t0 = time.perf_counter()
            prepared = collection.prepare(batch.sparse, train=True)
            t1 = time.perf_counter()
            pooled = collection.pooled_rows(prepared)
            t2 = time.perf_counter()
            x = torch.from_numpy(np.concatenate(pooled, axis=1)).requires_grad_()
            loss = test_w2.logloss(model(x).squeeze(1), batch.labels)
            dense_opt.zero_grad(set_to_none=True)
            loss.backward()
            dense_opt.step()
            grad = x.grad.numpy()
            grads = {n: np.ascontiguousarray(grad[:, j * dim:(j + 1) * dim]) for j, n in enumerate(names)}
            t3 = time.perf_counter()
            collection.backward(prepared, grads)
            t4 = time.perf_counter()
            for name, seconds in (("prepare", t1 - t0), ("pooled", t2 - t1), ("dense", t3 - t2),
                                  ("backward", t4 - t3)):
                phases[name] += seconds
        wall = time.perf_counter() - start["wall"]
        result: dict[str, Any] = {
            "servers": servers, "optimizer": optimizer, "steps": steps, "batch": test_w2.BATCH,
            "samples_per_s": steps * test_w2.BATCH / wall,
            "ms_per_step": {k: 1e3 * v / steps for k, v in phases.items()},
            "worker_cpu_s_per_step": (self_cpu_s() - start["cpu"]) / steps,
            "unique_ids_per_step": sum(np.unique(batch.sparse[n][0]).size for n in names),
        }
        if cluster is not None:
            stats = cluster.stats()
            sent, received = socket_bytes([p.port for p in procs])
            result.update(
                pull_requests_per_step=(sum(s["pull_requests"] for s in stats) - start["pulls"]) / steps,
                push_requests_per_step=(sum(s["push_requests"] for s in stats) - start["pushes"]) / steps,
                lookup_calls_per_step=cluster.lookup.calls / steps,
                push_calls_per_step=cluster.push.calls / steps,
                lookup_ms_per_step=1e3 * cluster.lookup.seconds / steps,
                push_ms_per_step=1e3 * cluster.push.seconds / steps,
                sent_bytes_per_step=(sent - start["sent"]) / steps,
                received_bytes_per_step=(received - start["received"]) / steps,
                servers_cpu_s_per_step=(sum(p.cpu_seconds() for p in procs) - start["servers_cpu"]) / steps)
        return result


def print_table(results: list[dict[str, Any]]) -> None:
    def row(label: str, fn: Callable[[dict[str, Any]], Any]) -> None:
        print(f"| {label} | " + " | ".join(str(fn(r)) for r in results) + " |")

    print("| per step | " + " | ".join("embedded" if r["servers"] == 0 else f"{r['servers']} server(s)"
                                       for r in results) + " |")
    print("| --- |" + " ---: |" * len(results))
    row("samples/s (sequential loop)", lambda r: f"{r['samples_per_s']:,.0f}")
    for phase in ("prepare", "pooled", "dense", "backward"):
        row(f"{phase} ms", lambda r, p=phase: f"{r['ms_per_step'].get(p, 0):.1f}")
    row("  of pooled: Cluster.lookup ms", lambda r: f"{r['lookup_ms_per_step']:.1f}" if "lookup_ms_per_step" in r else "-")
    row("  of backward: Cluster.push ms", lambda r: f"{r['push_ms_per_step']:.1f}" if "push_ms_per_step" in r else "-")
    row("Cluster.lookup / push calls", lambda r: f"{r['lookup_calls_per_step']:.0f} / {r['push_calls_per_step']:.0f}"
        if "lookup_calls_per_step" in r else "-")
    row("pull / push requests (servers' stats)",
        lambda r: f"{r['pull_requests_per_step']:.0f} / {r['push_requests_per_step']:.0f}"
        if "pull_requests_per_step" in r else "-")
    row("bytes sent / received (KiB)", lambda r: f"{r['sent_bytes_per_step'] / 1024:,.0f} / "
        f"{r['received_bytes_per_step'] / 1024:,.0f}" if "sent_bytes_per_step" in r else "-")
    row("worker CPU ms", lambda r: f"{1e3 * r['worker_cpu_s_per_step']:.0f}")
    row("servers' CPU ms", lambda r: f"{1e3 * r['servers_cpu_s_per_step']:.0f}" if "servers_cpu_s_per_step" in r else "-")
    row("unique ids (all groups, last batch)", lambda r: f"{r['unique_ids_per_step']:,}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", type=int, nargs="+", default=[0, 1, 2], help="0: embedded")
    p.add_argument("--optimizer", choices=["adam", "adagrad"], default="adam")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--server-threads", type=int, default=test_w2.SERVER_THREADS)
    args = p.parse_args(argv)
    results = [profile(n, args.optimizer, args.steps, args.warmup, args.server_threads) for n in args.servers]
    print(f"W2 {args.optimizer}, batch {test_w2.BATCH}, worker threads {test_w2.THREADS}, server threads "
          f"{args.server_threads}, {args.steps} steps after {args.warmup}; load average {os.getloadavg()[0]:.2f}")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
