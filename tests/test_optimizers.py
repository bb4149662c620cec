"""The fused backward (unpool + update once per unique row) against the NumPy reference,
for every optimizer, pooling and several dims, over several steps."""

import numpy as np
import pytest

import sparsecore as sc
from reference import OPTIMIZERS, random_batch, train_with_reference


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("dim", [1, 3, 18])
def test_update_matches_numpy_reference(rng, opt_name, pooling, dim):
    opt = OPTIMIZERS[opt_name]
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=dim, optimizer=opt, init=sc.Normal(0.3), pooling=pooling)},
                                 seed=int(rng.integers(1 << 30)))
    keys, got, want, ref = train_with_reference(rng, emb, opt, pooling)
    got = got.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    exported = emb.export("t")
    counts = dict(zip(exported["keys"].tolist(), exported["update_count"].tolist()))
    for k in keys:
        assert counts[int(k)] == ref[int(k)].count


def test_each_unique_row_is_updated_once_per_step():
    # With SGD lr=1 and a zero-initialised row, one backward over a bag holding the id three
    # times moves the row by exactly the summed gradient (3 * g), and the count is 1.
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=2, optimizer=sc.SGD(lr=1.0), init=sc.Zeros())})
    batch = {"t": (np.array([7, 7, 7], np.int64), np.array([0, 3], np.int64))}
    emb.forward(batch)
    emb.backward(batch, {"t": np.array([[1.0, -2.0]], np.float32)})
    np.testing.assert_array_equal(emb.lookup("t", np.array([7], np.int64)), [[-3.0, 6.0]])
    assert emb.export("t")["update_count"].tolist() == [1]
    assert emb.export("t")["last_step"].tolist() == [1]


def test_group_lasso_can_zero_a_whole_row():
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, optimizer=sc.GroupLasso(lr=0.1, group_lambda=10.0),
                                                      init=sc.Normal(0.01))})
    batch = {"t": (np.array([1], np.int64), np.array([0, 1], np.int64))}
    emb.forward(batch)
    emb.backward(batch, {"t": np.full((1, 4), 0.01, np.float32)})
    np.testing.assert_array_equal(emb.lookup("t", np.array([1], np.int64)), np.zeros((1, 4), np.float32))


def test_ftrl_l1_gives_exact_zeros_for_small_gradients():
    emb = sc.EmbeddingCollection({"t": sc.TableConfig(dim=3, optimizer=sc.FTRL(lr=0.1, l1=1.0))})
    batch = {"t": (np.array([1], np.int64), np.array([0, 1], np.int64))}
    emb.forward(batch)
    emb.backward(batch, {"t": np.full((1, 3), 0.05, np.float32)})
    np.testing.assert_array_equal(emb.lookup("t", np.array([1], np.int64)), np.zeros((1, 3), np.float32))


def test_prepared_batches_may_interleave(rng):
    cfg = {"t": sc.TableConfig(dim=5, optimizer=sc.Adagrad(lr=0.1))}
    a, b = sc.EmbeddingCollection(cfg, seed=1), sc.EmbeddingCollection(cfg, seed=1)
    b1 = random_batch(rng, 10, 4, np.arange(30))[:2]
    b2 = random_batch(rng, 10, 4, np.arange(30))[:2]
    g1 = rng.normal(size=(10, 5)).astype(np.float32)
    g2 = rng.normal(size=(10, 5)).astype(np.float32)
    # a: prepare both first (pipelined), then apply in order
    p1, p2 = a.prepare({"t": b1}), a.prepare({"t": b2})
    a.backward(p1, {"t": g1})
    a.backward(p2, {"t": g2})
    b.backward({"t": b1}, {"t": g1})
    b.backward({"t": b2}, {"t": g2})
    ids = np.arange(30, dtype=np.int64)
    np.testing.assert_array_equal(a.lookup("t", ids), b.lookup("t", ids))
