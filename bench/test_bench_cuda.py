"""CUDA backend benchmarks (pytest-benchmark): one group per workload, backends and peers as
parametrised cases. Without a GPU only the CPU engine and the emulated kernels run (the
emulator is a correctness tool: its times say nothing about a GPU); device cases and torch
on CUDA skip with a message. SPARSECORE_BENCH_SCALE=tiny shrinks everything (CI smoke)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

TINY = os.environ.get("SPARSECORE_BENCH_SCALE") == "tiny"
TABLES = 2 if TINY else 4
BATCH = 64 if TINY else 512
VOCAB = 10_000
DIM = 16


def w1_like_batches(count: int, seed: int = 1234):
    """W1-shaped batches at a small scale: 1-20 ids per bag, Zipf(1.1) ids scattered by a
    fixed permutation."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(VOCAB)
    out = []
    for _ in range(count):
        batch = {}
        for t in range(TABLES):
            lengths = rng.integers(1, 21, size=BATCH)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            ids = perm[np.minimum(rng.zipf(1.1, size=int(offsets[-1])) - 1, VOCAB - 1)].astype(np.int64)
            batch[f"t{t}"] = (ids, offsets)
        out.append(batch)
    return out


def build(backend: str):
    tables = {f"t{t}": sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.05, eps=1e-8)) for t in range(TABLES)}
    if backend == "cpu":
        return sc.EmbeddingCollection(tables, 7)
    if backend == "emulated":
        return sc_cuda.DeviceEmbeddingCollection(tables, 7, emulate=True)
    if not sc_cuda.is_available():
        pytest.skip(f"skipped: no device ({sc_cuda.unavailable_reason()})")
    return sc_cuda.DeviceEmbeddingCollection(tables, 7, storage="fp16" if backend == "cuda-fp16" else "fp32")


PEERS = {"cpu": "sparsecore-cpu", "emulated": "sparsecore-emulated", "cuda": "sparsecore-cuda-host-arrays",
         "cuda-fp16": "sparsecore-cuda-fp16", "cuda-zero-copy": "sparsecore"}


def describe(benchmark, peer: str, samples: int, lookups: int, optimizer: str = "adagrad") -> None:
    """What bench/report.py reads: the device zero-copy case is "sparsecore", the others
    are labelled peers (no ratio is shown when no GPU ran it)."""
    benchmark.extra_info.update({"peer": peer, "optimizer": optimizer, "samples_per_call": samples,
                                 "lookups_per_call": lookups, "scale": "tiny" if TINY else "small"})


def on_device(batches, grads):
    """The same batches and gradients as torch CUDA tensors (the zero-copy path)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("skipped: no device for torch")
    return ([{n: tuple(torch.from_numpy(a).cuda() for a in g) for n, g in b.items()} for b in batches],
            {n: torch.from_numpy(g).cuda() for n, g in grads.items()})


@pytest.mark.parametrize("backend", ["cpu", "emulated", "cuda", "cuda-fp16", "cuda-zero-copy"])
def test_train_step(benchmark, backend):
    benchmark.group = f"cuda train step ({TABLES} tables, batch {BATCH}, dim {DIM})"
    emb = build(backend)
    batches = w1_like_batches(4)
    grads = {n: np.full((BATCH, DIM), 0.01, np.float32) for n in batches[0]}
    describe(benchmark, PEERS[backend], BATCH, sum(int(ids.size) for ids, _ in batches[0].values()))
    if backend == "cuda-zero-copy":
        batches, grads = on_device(batches, grads)
    for b in batches:  # first pass inserts; steady state is measured
        emb.backward(b, grads)
    state = {"i": 0}

    def step():
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        prepared = emb.prepare(b)
        emb.forward(prepared)
        emb.backward(prepared, grads)
        if backend == "cuda-zero-copy":
            import torch

            torch.cuda.synchronize()

    benchmark(step)


@pytest.mark.parametrize("backend", ["cpu", "emulated", "cuda"])
def test_lookup(benchmark, backend):
    benchmark.group = f"cuda lookup (dim {DIM})"
    emb = build(backend)
    ids = np.random.default_rng(3).integers(0, VOCAB, size=4096 if not TINY else 512)
    describe(benchmark, PEERS[backend], ids.size, ids.size, optimizer="-")
    emb.lookup("t0", ids, insert=True)
    benchmark(lambda: emb.lookup("t0", ids))


def test_torch_embedding_bag_on_gpu(benchmark):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("skipped: no device for torch")
    benchmark.group = f"cuda train step ({TABLES} tables, batch {BATCH}, dim {DIM})"
    bags = [torch.nn.EmbeddingBag(VOCAB, DIM, mode="sum", sparse=True).cuda() for _ in range(TABLES)]
    opt = torch.optim.SparseAdam([p for b in bags for p in b.parameters()])
    host_batches = w1_like_batches(4)
    describe(benchmark, "torch-EmbeddingBag+SparseAdam", BATCH, sum(int(i.size) for i, _ in host_batches[0].values()),
             optimizer="adam")
    batches = [{n: (torch.from_numpy(i).cuda(), torch.from_numpy(o[:-1]).cuda()) for n, (i, o) in b.items()}
               for b in host_batches]
    state = {"i": 0}

    def step():
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        opt.zero_grad()
        loss = sum(bag(*b[f"t{t}"]).sum() for t, bag in enumerate(bags))
        loss.backward()
        opt.step()
        torch.cuda.synchronize()

    benchmark(step)
