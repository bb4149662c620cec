"""Evaluation forward (pools straight from the ids, no dedup) against the NumPy reference:
every pooling, weights, dims on and off the fixed-width kernels, unknown and extreme ids,
empty bags, long bags (past the prefetch distance) and bad input."""

import numpy as np
import pytest

import sparsecore as sc
from reference import EXTREME_IDS, assert_pooled, random_batch

DIMS = [1, 3, 4, 16, 18, 64, 129]


def make(dim, pooling):
    return sc.EmbeddingCollection(
        {"t": sc.TableConfig(dim=dim, optimizer=sc.SGD(lr=0.1), init=sc.Normal(0.5), pooling=pooling)}, seed=11)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("max_len", [3, 40])
def test_evaluate_matches_numpy_reference_with_unknown_ids_as_zeros(rng, dim, pooling, weighted, max_len):
    emb = make(dim, pooling)
    pool_ids = np.concatenate([EXTREME_IDS, rng.integers(-2**63, 2**63 - 1, size=60, dtype=np.int64)])
    known = pool_ids[rng.random(len(pool_ids)) < 0.6]
    emb.lookup("t", known, insert=True)
    ids, offsets, weights = random_batch(rng, 29, max_len, pool_ids, weighted=weighted)
    before = emb.table_size("t")
    out = emb.evaluate({"t": (ids, offsets, weights) if weighted else (ids, offsets)})["t"]
    assert emb.table_size("t") == before  # evaluation never inserts
    rows = emb.lookup("t", ids)
    assert not rows[~np.isin(ids, known)].any()  # unknown ids read as zeros
    assert_pooled(out, rows, offsets, weights, pooling)


def test_evaluate_equals_prepared_evaluation_forward(rng):
    emb = make(16, "sum")
    ids = rng.integers(0, 5000, size=20000, dtype=np.int64)
    emb.lookup("t", ids[: len(ids) // 2], insert=True)
    offsets = np.concatenate([[0], np.sort(rng.integers(0, len(ids), size=999)), [len(ids)]]).astype(np.int64)
    direct = emb.evaluate({"t": (ids, offsets)})["t"]
    prepared = emb.forward(emb.prepare({"t": (ids, offsets)}, train=False))["t"]
    np.testing.assert_allclose(direct, prepared, rtol=1e-6, atol=1e-7)


def test_evaluate_of_empty_batch_and_empty_bags(rng):
    emb = make(5, "mean")
    out = emb.evaluate({"t": (np.zeros(0, np.int64), np.zeros(4, np.int64))})["t"]
    np.testing.assert_array_equal(out, np.zeros((3, 5), np.float32))
    assert emb.evaluate({"t": (np.zeros(0, np.int64), np.zeros(1, np.int64))})["t"].shape == (0, 5)


@pytest.mark.parametrize("offsets, message", [
    ([1, 2], "offsets\\[0\\] must be 0"),
    ([0, 2, 1, 3], "non-decreasing"),
    ([0, 5], "must equal the number of ids"),
])
def test_evaluate_rejects_bad_offsets(offsets, message):
    emb = make(4, "none")
    with pytest.raises(ValueError, match=message):
        emb.evaluate({"t": (np.array([1, 2, 3], np.int64), np.array(offsets, np.int64))})
    assert emb.table_size("t") == 0


def test_evaluate_rejects_wrong_dtype_and_unknown_group():
    emb = make(4, "sum")
    with pytest.raises((TypeError, ValueError), match="ids"):
        emb.evaluate({"t": (np.array([1.5, 2.0]), np.array([0, 2], np.int64))})
    with pytest.raises(KeyError, match="unknown table"):
        emb.evaluate({"u": (np.array([1], np.int64), np.array([0, 1], np.int64))})
