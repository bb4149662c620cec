"""The hash table against a Python dict under random operation sequences: inserts, finds,
erases, growth from 16 slots to many thousands, and the extreme keys (including the value a
table uses internally as its empty marker)."""

import numpy as np
import pytest

import sparsecore as sc
from reference import EXTREME_IDS


@pytest.mark.parametrize("shard_bits", [0, 2, 6])
def test_random_operations_match_a_dict(rng, shard_bits):
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=3, optimizer=sc.SGD(lr=1.0), init=sc.Uniform(-1, 1),
                                                      shard_bits=shard_bits)}, seed=9)
    model: dict[int, np.ndarray] = {}
    universe = np.concatenate([EXTREME_IDS, rng.integers(-2**63, 2**63 - 1, size=3000, dtype=np.int64)])
    for _ in range(60):
        op = rng.choice(["insert", "insert", "erase", "find", "update"])
        keys = rng.choice(universe, size=int(rng.integers(0, 400)))
        if op == "insert":
            rows = emb.lookup("t", keys, insert=True)
            for k, r in zip(keys.tolist(), rows):
                if k in model:
                    np.testing.assert_array_equal(r, model[k])
                model.setdefault(k, r.copy())
        elif op == "erase":
            present = len({k for k in keys.tolist() if k in model})
            assert emb.erase("t", keys) == present
            for k in keys.tolist():
                model.pop(k, None)
        elif op == "find":
            rows = emb.lookup("t", keys)
            for k, r in zip(keys.tolist(), rows):
                np.testing.assert_array_equal(r, model.get(k, np.zeros(3, np.float32)))
        else:  # an SGD step with lr=1 moves each distinct row by its summed gradient
            if len(keys) == 0:
                continue
            offsets = np.array([0, len(keys)], np.int64)
            for k, r in zip(keys.tolist(), emb.lookup("t", keys, insert=True)):
                model.setdefault(k, r.copy())
            emb.forward({"t": (keys, offsets)})
            g = rng.normal(size=(1, 3)).astype(np.float32)
            emb.backward({"t": (keys, offsets)}, {"t": g})
            counts: dict[int, int] = {}
            for k in keys.tolist():
                counts[k] = counts.get(k, 0) + 1
            for k, c in counts.items():
                acc = np.zeros(3, np.float32)
                for _ in range(c):
                    acc += g[0]
                model[k] = model[k] - acc
        assert emb.table_size("t") == len(model)
    exported = emb.export("t")
    assert sorted(exported["keys"].tolist()) == sorted(model)
    for k, w in zip(exported["keys"].tolist(), exported["weights"]):
        np.testing.assert_array_equal(w, model[k])


def test_erased_rows_come_back_with_their_initial_values(rng):
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, optimizer=sc.SGD(lr=1.0))}, seed=2)
    ids = EXTREME_IDS
    first = emb.lookup("t", ids, insert=True)
    batch = {"t": (ids, np.array([0, len(ids)], np.int64))}
    emb.backward(batch, {"t": np.ones((1, 4), np.float32)})
    assert emb.erase("t", ids) == len(ids)
    assert emb.table_size("t") == 0
    np.testing.assert_array_equal(emb.lookup("t", ids, insert=True), first)


def test_growth_keeps_every_row(rng):
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=1, optimizer=sc.SGD(), shard_bits=1)})
    keys = rng.permutation(np.arange(-50000, 50000, dtype=np.int64))
    expected = emb.lookup("t", keys[:10], insert=True)
    for chunk in np.array_split(keys, 20):
        emb.lookup("t", chunk, insert=True)
    assert emb.table_size("t") == len(keys)
    np.testing.assert_array_equal(emb.lookup("t", keys[:10]), expected)


def test_a_backward_after_erase_recreates_rows_instead_of_writing_freed_memory():
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=2, optimizer=sc.SGD(lr=1.0), init=sc.Zeros())})
    batch = {"t": (np.array([1, 2], np.int64), np.array([0, 2], np.int64))}
    prepared = emb.prepare(batch)
    emb.erase("t", np.array([1, 2], np.int64))
    emb.backward(prepared, {"t": np.ones((1, 2), np.float32)})
    np.testing.assert_array_equal(emb.lookup("t", np.array([1, 2], np.int64)), -np.ones((2, 2), np.float32))
