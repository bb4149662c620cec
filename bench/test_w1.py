"""Workload W1 side by side: sparsecore against torch nn.EmbeddingBag + sparse optimizers and
fbgemm-gpu-cpu TBE, on the same batches, gradients, hyperparameters and thread count.

Groups (one table each in the report):
  w1-step-<optimizer>   one training step (forward + backward + update), steady state: every
                        table already holds all of its ids
  w1-forward-eval       forward only, no inserts, no autograd
  w1-forward-train      the forward of a training step (keeps what backward needs)
  w1-first-pass         the first steps on empty tables (sparsecore inserts its keys)
  w1-memory             bytes per row and the transient peak, each peer in its own process

Run: ``pytest bench --benchmark-json=bench/results/w1.json`` then ``python bench/report.py``.
Peers that are not installed are skipped with the reason. Nothing here asserts a timing.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import workload

HERE = Path(__file__).resolve().parent

# (group, peer, optimizer, kind); ordered by (peer, optimizer) so that one peer's tables
# serve all of its cases before the next peer's are built.
CASES = [
    ("w1-step-adagrad", "sparsecore", "adagrad", "step"),
    ("w1-forward-eval", "sparsecore", "adagrad", "forward-eval"),
    ("w1-forward-train", "sparsecore", "adagrad", "forward-train"),
    ("w1-step-adagrad", "sparsecore-dense", "adagrad", "step"),
    ("w1-forward-eval", "sparsecore-dense", "adagrad", "forward-eval"),
    ("w1-forward-train", "sparsecore-dense", "adagrad", "forward-train"),
    ("w1-step-adagrad", "fbgemm", "adagrad", "step"),
    ("w1-forward-eval", "fbgemm", "adagrad", "forward-eval"),
    ("w1-forward-train", "fbgemm", "adagrad", "forward-train"),
    ("w1-step-adagrad", "torch", "adagrad", "step"),
    ("w1-forward-eval", "torch", "adagrad", "forward-eval"),
    ("w1-forward-train", "torch", "adagrad", "forward-train"),
    ("w1-step-rowwise-adagrad", "sparsecore", "rowwise_adagrad", "step"),
    ("w1-step-rowwise-adagrad", "fbgemm", "rowwise_adagrad", "step"),
    ("w1-step-sgd", "sparsecore", "sgd", "step"),
    ("w1-step-sgd", "fbgemm", "sgd", "step"),
    ("w1-step-sgd", "torch", "sgd", "step"),
    ("w1-step-adam", "sparsecore", "adam", "step"),
    ("w1-step-adam", "torch", "adam", "step"),
    ("w1-first-pass", "sparsecore", "adagrad", "first-pass"),
    ("w1-first-pass", "fbgemm", "adagrad", "first-pass"),
    ("w1-first-pass", "torch", "adagrad", "first-pass"),
    ("w1-memory", "sparsecore", "adagrad", "memory"),
    ("w1-memory", "fbgemm", "adagrad", "memory"),
    ("w1-memory", "torch", "adagrad", "memory"),
]


def _case_id(case: tuple[str, str, str, str]) -> str:
    group, peer, optimizer, kind = case
    return f"{kind}-{optimizer}-{peer}"


def _skip_if_missing(peer: str) -> None:
    why = workload.peer_available(peer)
    if why:
        pytest.skip(f"{peer}: {why}")


def _record(benchmark, group: str, peer: str, optimizer: str, scale, samples: int, lookups: int) -> None:
    benchmark.group = group
    benchmark.extra_info.update(peer=peer, optimizer=optimizer, scale=scale.name, threads=workload.THREADS,
                                samples_per_call=samples, lookups_per_call=lookups,
                                load_average=os.getloadavg()[0])  # the machine is shared: say how busy


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_w1(benchmark, case, scale, w1_batches, peers):
    group, peer_name, optimizer, kind = case
    _skip_if_missing(peer_name)
    batches = w1_batches
    per_batch_ids = sum(batches.ids_per_batch) // len(batches)

    if kind == "memory":
        _memory_case(benchmark, group, peer_name, optimizer, scale)
        return

    if kind == "first-pass":
        peers.drop()  # fresh tables per round; no other peer's tables alive meanwhile
        steps = min(scale.first_pass_steps, len(batches))
        holder: dict[str, workload.Peer] = {}

        def fresh():
            holder.clear()
            gc.collect()
            holder["peer"] = workload.make_peer(peer_name, optimizer, batches, scale.vocab, fill=False)
            return (), {}

        def first_steps():
            p = holder["peer"]
            for i in range(steps):
                p.step(i)

        _record(benchmark, group, peer_name, optimizer, scale, steps * batches.batch_size,
                sum(batches.ids_per_batch[:steps]))
        benchmark.pedantic(first_steps, setup=fresh, rounds=min(3, scale.rounds), iterations=1)
        holder.clear()
        return

    peer = peers.get(peer_name, optimizer)
    counter = iter(range(1 << 62))

    if kind == "step":
        def run():
            peer.step(next(counter) % len(batches))
    else:
        train = kind == "forward-train"

        def run():
            peer.forward(next(counter) % len(batches), train)

    _record(benchmark, group, peer_name, optimizer, scale, batches.batch_size, per_batch_ids)
    benchmark.pedantic(run, rounds=scale.rounds, iterations=1, warmup_rounds=1)


def _memory_case(benchmark, group: str, peer: str, optimizer: str, scale) -> None:
    """Runs bench/peak_memory.py for one peer in a fresh process and records what it found."""
    result: dict = {}

    def probe():
        env = dict(os.environ, SPARSECORE_BENCH_SCALE=scale.name)
        cmd = [sys.executable, str(HERE / "peak_memory.py"), "--peer", peer, "--optimizer", optimizer]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"peak_memory.py failed for {peer}:\n{proc.stderr[-2000:]}")
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))

    _record(benchmark, group, peer, optimizer, scale, 0, 0)
    benchmark.pedantic(probe, rounds=1, iterations=1)
    benchmark.extra_info.update(memory=result)
    assert result["rows"] == scale.tables * scale.vocab
    assert result["bytes_per_row"] > 0
