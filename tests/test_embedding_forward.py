"""Forward pooling against the NumPy reference."""

import numpy as np
import pytest

import sparsecore as sc
from reference import EXTREME_IDS, assert_pooled, random_batch

DIMS = [1, 3, 16, 18, 20, 129]


def make(dim, pooling, init=None, seed=3):
    return sc.EmbeddingCollection(
        {"t": sc.TableConfig(dim=dim, optimizer=sc.SGD(lr=0.1), init=init or sc.Normal(0.5), pooling=pooling)},
        seed=seed)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_matches_numpy_reference(rng, dim, pooling, weighted):
    emb = make(dim, pooling)
    pool_ids = np.concatenate([EXTREME_IDS, rng.integers(-2**63, 2**63 - 1, size=30, dtype=np.int64)])
    ids, offsets, weights = random_batch(rng, 37, 9, pool_ids, weighted=weighted)
    batch = {"t": (ids, offsets, weights) if weighted else (ids, offsets)}
    out = emb.forward(batch)["t"]
    rows = emb.lookup("t", ids)
    assert_pooled(out, rows, offsets, weights, pooling)


def test_rows_are_created_on_demand_once_per_distinct_id(rng):
    emb = make(4, "sum")
    ids = np.array([5, 5, 7, 5, -1, 2**63 - 1, -(2**63)], dtype=np.int64)
    emb.forward({"t": (ids, np.array([0, 3, 7]))})
    assert emb.table_size("t") == 5


def test_evaluation_never_inserts_and_unknown_ids_read_as_zeros(rng):
    emb = make(6, "sum")
    known = np.array([1, 2, 3], dtype=np.int64)
    emb.forward({"t": (known, np.array([0, 3]))})
    ids = np.array([1, 99, 2, 100], dtype=np.int64)
    out = emb.forward({"t": (ids, np.array([0, 2, 4]))}, train=False)["t"]
    assert emb.table_size("t") == 3
    rows = emb.lookup("t", np.array([1, 2], dtype=np.int64))
    np.testing.assert_allclose(out[0], rows[0], rtol=1e-6)
    np.testing.assert_allclose(out[1], rows[1], rtol=1e-6)
    np.testing.assert_array_equal(emb.lookup("t", np.array([99], dtype=np.int64)), np.zeros((1, 6), np.float32))


def test_empty_batch_and_empty_bags():
    emb = make(3, "mean")
    out = emb.forward({"t": (np.zeros(0, np.int64), np.zeros(1, np.int64))})["t"]
    assert out.shape == (0, 3)
    out = emb.forward({"t": (np.zeros(0, np.int64), np.zeros(4, np.int64))})["t"]
    np.testing.assert_array_equal(out, np.zeros((3, 3), np.float32))


def test_initial_values_depend_only_on_seed_table_and_key(rng):
    ids = rng.integers(-2**63, 2**63 - 1, size=200, dtype=np.int64)
    a = make(5, "sum", seed=11)
    b = make(5, "sum", seed=11)
    b.lookup("t", rng.permutation(ids), insert=True)  # another insertion order
    a.lookup("t", ids, insert=True)
    np.testing.assert_array_equal(a.lookup("t", ids), b.lookup("t", ids))
    c = make(5, "sum", seed=12)
    assert not np.array_equal(a.lookup("t", ids), c.lookup("t", ids, insert=True))


@pytest.mark.parametrize("init,check", [
    (sc.Zeros(), lambda x: np.all(x == 0)),
    (sc.Constant(0.25), lambda x: np.all(x == np.float32(0.25))),
    (sc.Uniform(-0.5, 0.25), lambda x: x.min() >= -0.5 and x.max() < 0.25 and abs(x.mean() + 0.125) < 0.02),
    (sc.Normal(2.0, mean=1.0), lambda x: abs(x.mean() - 1.0) < 0.05 and abs(x.std() - 2.0) < 0.05),
    (sc.TruncatedNormal(1.0), lambda x: np.abs(x).max() <= 2.0 and 0.8 < x.std() < 0.92),
])
def test_initializers_have_their_distribution(init, check):
    emb = make(16, "sum", init=init)
    x = emb.lookup("t", np.arange(4000, dtype=np.int64), insert=True)
    assert check(x)


def test_shards_do_not_change_results(rng):
    ids, offsets, _ = random_batch(rng, 50, 8, rng.integers(0, 1000, size=300))
    outs = []
    for bits in (0, 3, 8):
        emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=7, optimizer=sc.Adagrad(lr=0.1), shard_bits=bits)}, seed=5)
        out = emb.forward({"t": (ids, offsets)})["t"]
        emb.backward({"t": (ids, offsets)}, {"t": np.ones_like(out)})
        outs.append(emb.forward({"t": (ids, offsets)})["t"])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_int32_inputs_are_widened():
    emb = make(2, "sum")
    out = emb.forward({"t": (np.array([1, 2], np.int32), np.array([0, 2], np.int32))})["t"]
    assert out.shape == (1, 2)
