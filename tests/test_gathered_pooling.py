"""Pooling of gathered rows (``_core.pool_gathered_rows``) and the backward's bag scales
(``_core.bag_gradient_scales``): the collection's own kernels applied to rows a caller holds
(the cluster collection's pulled rows), equal to the collection's forward bit for bit and to the
NumPy reference within float32 rounding."""

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import _core

from reference import EXTREME_IDS, assert_pooled, random_batch


@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dim", [1, 3, 4, 18])
def test_gathered_pooling_equals_the_collection_forward_bit_for_bit(rng, pooling, weighted, dim):
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=dim, pooling=pooling)}, seed=int(rng.integers(1 << 30)))
    ids, offsets, weights = random_batch(rng, 37, 9, EXTREME_IDS, weighted=weighted)
    group = (ids, offsets, weights) if weighted else (ids, offsets)
    out = emb.forward({"t": group})["t"]
    rows = emb.lookup("t", ids)
    pooled = _core.pool_gathered_rows(rows, offsets, weights, pooling)
    np.testing.assert_array_equal(pooled, out[0] if pooling == "none" else out)
    assert_pooled((pooled, np.diff(offsets)) if pooling == "none" else pooled, rows, offsets, weights, pooling)


@pytest.mark.parametrize("weighted", [False, True])
def test_bag_gradient_scales_are_one_over_the_bag_length_or_weight_sum(rng, weighted):
    _, offsets, weights = random_batch(rng, 50, 8, EXTREME_IDS, weighted=weighted)
    lengths = np.diff(offsets)
    np.testing.assert_array_equal(_core.bag_gradient_scales(offsets, weights, "sum"), np.ones(50, np.float32))
    scales = _core.bag_gradient_scales(offsets, weights, "mean")
    # Per-bag sums (np.add.reduceat cannot take the start of an empty last bag, len(weights)).
    denom = np.array([weights[a:b].sum() for a, b in zip(offsets[:-1], offsets[1:])]) if weighted else lengths
    expect = np.where(denom != 0, 1.0 / np.where(denom != 0, denom, 1), 0.0)
    np.testing.assert_allclose(scales, expect, rtol=1e-6)
    assert (scales[lengths == 0] == 0).all()


def test_gathered_pooling_rejects_inconsistent_inputs():
    rows = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="offsets"):
        _core.pool_gathered_rows(rows, np.array([0, 2], np.int64))
    with pytest.raises(ValueError, match="non-decreasing"):
        _core.pool_gathered_rows(rows, np.array([0, 2, 1, 3], np.int64))
    with pytest.raises(ValueError, match="offsets"):
        _core.pool_gathered_rows(rows, np.array([], np.int64))
    with pytest.raises(ValueError, match="weights"):
        _core.pool_gathered_rows(rows, np.array([0, 3], np.int64), np.ones(2, np.float32))
    with pytest.raises(TypeError, match="rows"):
        _core.pool_gathered_rows(rows.astype(np.float64), np.array([0, 3], np.int64))
    with pytest.raises(ValueError, match="pooling"):
        _core.pool_gathered_rows(rows, np.array([0, 3], np.int64), None, "max")
    with pytest.raises(ValueError, match="offsets"):
        _core.bag_gradient_scales(np.array([1, 3], np.int64), None, "mean")
