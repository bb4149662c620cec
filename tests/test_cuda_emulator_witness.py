"""The CUDA emulator as a performance witness: it counts what the kernels ask of a device
(launches per kernel, host synchronisations, bytes by direction), and it runs blocks in a
seeded random order, under which every result stays bit-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def block_seed():
    saved = sc_cuda.emulator_block_seed()
    yield
    sc_cuda.set_emulator_block_seed(saved)


def batch(rng, tables, bags=12):
    out = {}
    for t in range(tables):
        lengths = rng.integers(0, 6, size=bags)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out[f"t{t}"] = (rng.integers(-50, 50, size=int(offsets[-1])).astype(np.int64), offsets)
    return out


def collection(tables=2, dim=5):
    configs = {f"t{t}": sc.TableConfig(dim=dim, optimizer=sc.Adagrad(lr=0.1)) for t in range(tables)}
    return sc_cuda.DeviceEmbeddingCollection(configs, 3, emulate=True)


def test_counters_see_every_part_of_a_training_step(rng):
    emb = collection()
    b = batch(rng, 2)
    grads = {n: np.ones((12, 5), np.float32) for n in b}
    sc_cuda.reset_emulator_counters()
    emb.backward(emb.prepare(b), grads)
    c = sc_cuda.emulator_counters()
    for kernel in ("batch_dedup_insert_kernel", "batch_init_rows_kernel<T>", "update_rows_kernel<T>"):
        assert c["kernels"][kernel]["launches"] == 1, kernel  # once per step, for both groups
    # empty tables: a find pass counts the misses that size the growth, then the insert pass
    assert c["kernels"]["batch_lookup_kernel<TableDesc<T>>"]["launches"] == 2
    assert c["launches"] == sum(k["launches"] for k in c["kernels"].values())
    ids_bytes = sum(ids.nbytes for ids, _ in b.values())
    grad_bytes = sum(g.nbytes for g in grads.values())
    assert c["h2d_bytes"] >= ids_bytes + grad_bytes
    assert c["host_syncs"] >= 1 and c["d2h_copies"] >= 1
    sc_cuda.reset_emulator_counters()
    assert sc_cuda.emulator_counters()["launches"] == 0


def test_forward_downloads_exactly_the_pooled_outputs(rng):
    emb = collection()
    b = batch(rng, 2)
    prepared = emb.prepare(b)
    sc_cuda.reset_emulator_counters()
    out = emb.forward(prepared)
    c = sc_cuda.emulator_counters()
    assert c["d2h_bytes"] == sum(np.asarray(o).nbytes for o in out.values())
    assert c["h2d_bytes"] == 0  # the prepared batch is already on the device


def test_block_seed_can_be_set_and_cleared(block_seed):
    sc_cuda.set_emulator_block_seed(5)
    assert sc_cuda.emulator_block_seed() == 5
    sc_cuda.set_emulator_block_seed(None)
    assert sc_cuda.emulator_block_seed() is None


def test_training_is_bit_identical_under_any_block_order(rng, block_seed):
    batches = [batch(rng, 2, bags=40) for _ in range(3)]
    grads = [{n: rng.standard_normal((40, 5)).astype(np.float32) for n in b} for b in batches]
    results = []
    for seed in (None, 7, 12345):
        sc_cuda.set_emulator_block_seed(seed)
        emb = sc_cuda.DeviceEmbeddingCollection(
            {f"t{t}": sc.TableConfig(dim=5, optimizer=sc.Adagrad(lr=0.1)) for t in range(2)}, 3, emulate=True,
            block_threads=32, max_blocks=8)
        outs = []
        for b, g in zip(batches, grads):
            p = emb.prepare(b)
            outs.append(emb.forward(p))
            emb.backward(p, g)
        results.append((outs, {n: emb.export(n)["weights"] for n in ("t0", "t1")}))
    for outs, tables in results[1:]:
        for got, want in zip(outs, results[0][0]):
            for n in got:
                np.testing.assert_array_equal(got[n], want[n])
        for n in tables:
            np.testing.assert_array_equal(tables[n], results[0][1][n])


def test_w1_counts_script_reports_a_step():
    # The package this test imported (the source tree with a built extension, or the installed one).
    env = dict(os.environ, PYTHONPATH=str(Path(sc.__file__).resolve().parent.parent))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cuda_emulated_counts.py"), "--batch", "8",
                           "--tables", "2"], env=env, capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(proc.stdout)
    assert r["tables"] == 2 and r["batch_size"] == 8 and r["ids"] > 0
    assert r["step"]["launches"] == sum(p["launches"] for p in r["phases"].values()) > 0
    assert set(r["phases"]) == {"prepare", "forward", "backward"}


# What a W1-shaped training step (26 tables, prepare + forward + backward, NumPy in and out)
# may ask of a device: one launch per op for all tables together (three radix passes while
# the largest group has at most 4096 ids, four up to 65536), and one host sync (forward's
# outputs read back). Counts, never timings.
W1_STEP_LAUNCHES = 24
W1_STEP_HOST_SYNCS = 1


def test_w1_step_stays_within_the_launch_and_sync_budget():
    env = dict(os.environ, PYTHONPATH=str(Path(sc.__file__).resolve().parent.parent))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cuda_emulated_counts.py"), "--batch", "32",
                           "--tables", "26"], env=env, capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(proc.stdout)
    assert r["tables"] == 26 and r["ids"] > 26 * 32
    assert r["step"]["launches"] <= W1_STEP_LAUNCHES, r["kernel_launches"]
    assert r["step"]["host_syncs"] <= W1_STEP_HOST_SYNCS, r["phases"]
    assert r["phases"]["backward"]["host_syncs"] == 0 and r["phases"]["prepare"]["host_syncs"] == 0
    # Every launch is one for all 26 groups: no kernel runs once per group.
    assert max(r["kernel_launches"].values()) < 26
    assert r["bytes"]["unmodelled_kernels"] == []
    assert r["bytes"]["bytes_per_key"] >= r["bytes"]["floor_bytes_per_key"]


@pytest.mark.parametrize("dim, storage", [(8, "fp32"), (5, "fp32"), (6, "fp16")])
def test_a_find_is_one_launch_that_probes_and_copies(rng, dim, storage):
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=dim)}, 3, storage=storage, emulate=True,
                                            block_threads=32, max_blocks=3)
    keys = rng.integers(-1000, 1000, size=300).astype(np.int64)
    want = dev.lookup("t", keys, insert=True)
    probe = np.concatenate([keys[::-1], [5000, -5000]])  # two absent keys read zeros
    sc_cuda.reset_emulator_counters()
    got = dev.lookup("t", probe)
    c = sc_cuda.emulator_counters()
    assert c["launches"] == 1 and list(c["kernels"]) == ["find_rows_kernel<T>"]
    np.testing.assert_array_equal(got[:-2], want[::-1])
    np.testing.assert_array_equal(got[-2:], np.zeros((2, dim), np.float32))
