"""The device step is table-batched: every group of a batch goes through one launch per op,
each kernel finding its group from per-group offsets. These cases mix what the offsets must
keep apart (the same ids in several groups, groups without ids or without bags, odd and
wide dims, every pooling, weights on some groups) and compare with the CPU engine."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda
from test_cuda import assert_same_training

TABLES = {
    "a": sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.1)),
    "b": sc.TableConfig(dim=16, pooling="mean", optimizer=sc.Adam(lr=0.01)),
    "c": sc.TableConfig(dim=5, pooling="none", optimizer=sc.SGD(lr=0.1)),
    "d": sc.TableConfig(dim=8, optimizer=sc.FTRL(lr=0.1, l1=0.001)),
}


def shared_ids_batch(rng: np.random.Generator) -> dict:
    ids = rng.integers(0, 40, size=30).astype(np.int64)
    offsets = np.array([0, 4, 4, 11, 30], np.int64)
    return {
        "a": (ids, offsets),
        "b": (ids[::-1].copy(), offsets, rng.uniform(0.5, 2.0, ids.size).astype(np.float32)),
        "c": (np.empty(0, np.int64), np.zeros(5, np.int64)),  # bags, none of them with ids
        "d": (np.empty(0, np.int64), np.zeros(1, np.int64)),  # no bags at all
    }


def first_occurrence_order(ids: np.ndarray) -> np.ndarray:
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def test_groups_sharing_ids_keep_their_own_unique_ids(rng):
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, 5, emulate=True)
    batch = shared_ids_batch(rng)
    prepared = dev.prepare(batch)
    for name, group in batch.items():
        ids = group[0]
        assert prepared.num_unique(name) == np.unique(ids).size, name
        np.testing.assert_array_equal(prepared.unique_ids(name), first_occurrence_order(ids), err_msg=name)


def test_mixed_groups_train_as_the_cpu_engine(rng):
    cpu = sc.EmbeddingCollection(TABLES, 11)
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, 11, emulate=True, block_threads=32, max_blocks=3)
    for _ in range(3):
        batch = shared_ids_batch(rng)
        want, got = cpu.forward(batch), dev.forward(batch)
        grads = {}
        for name in TABLES:
            w = want[name][0] if isinstance(want[name], tuple) else want[name]
            g = got[name][0] if isinstance(got[name], tuple) else got[name]
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6, err_msg=name)
            grads[name] = rng.standard_normal(w.shape).astype(np.float32)
        assert dev.backward(batch, grads) == cpu.backward(batch, grads)
    for name in ("a", "b"):
        e, c = dev.export(name), cpu.export(name)
        order = np.argsort(c["keys"])
        np.testing.assert_array_equal(e["keys"], c["keys"][order])
        np.testing.assert_allclose(e["weights"], c["weights"][order], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("ids_per_group", [1, 17, 300, 5000])
def test_radix_pass_counts_follow_the_largest_group(rng, ids_per_group):
    # Occurrence lists are sorted by group-local unique index: 1, 2, 3 or 4 four-bit passes.
    tables = {f"t{i}": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1)) for i in range(3)}
    cpu = sc.EmbeddingCollection(tables, 2)
    dev = sc_cuda.DeviceEmbeddingCollection(tables, 2, emulate=True)
    assert_same_training(cpu, dev, rng, steps=1, rtol=2e-5, atol=2e-6)
    batch = {}
    for i, name in enumerate(tables):
        n = ids_per_group if i == 1 else 3
        ids = rng.integers(0, 2 * n + 1, size=n).astype(np.int64)
        batch[name] = (ids, np.array([0, n // 2, n], np.int64))
    sc_cuda.reset_emulator_counters()
    prepared = dev.prepare(batch)
    passes = sc_cuda.emulator_counters()["kernels"]["batch_radix_scatter_kernel"]["launches"]
    bits = max(1, int(ids_per_group - 1).bit_length())
    assert passes == max(1, (bits + 3) // 4)
    grads = {name: rng.standard_normal((2, 4)).astype(np.float32) for name in tables}
    dev.forward(prepared)
    cpu.forward(batch)
    assert dev.backward(prepared, grads) == cpu.backward(batch, grads)
    for name in tables:
        e, c = dev.export(name), cpu.export(name)
        order = np.argsort(c["keys"])
        np.testing.assert_allclose(e["weights"], c["weights"][order], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("block_threads, max_blocks", [(32, 1), (64, 3), (256, 0)])
def test_rows_created_are_counted_per_table_by_whole_warps(rng, block_threads, max_blocks):
    # Inserts are counted with one atomic per table per warp; lanes of one warp belong to
    # several groups where groups meet, and lanes past the end count nothing.
    tables = {f"t{i}": sc.TableConfig(dim=2) for i in range(4)}
    dev = sc_cuda.DeviceEmbeddingCollection(tables, 1, emulate=True, block_threads=block_threads,
                                            max_blocks=max_blocks)
    want = {name: set() for name in tables}
    for _ in range(3):
        batch = {}
        for i, name in enumerate(tables):
            n = int(rng.integers(0, 90))
            ids = rng.integers(0, 40 * (i + 1), size=n).astype(np.int64)
            want[name].update(int(k) for k in ids)
            batch[name] = (ids, np.array([0, n], np.int64))
        dev.prepare(batch)
        for name in tables:
            assert dev.table_size(name) == len(want[name]), name
