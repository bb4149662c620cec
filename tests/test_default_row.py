"""The table's default row (``TableConfig(default_value=c)``): every id without a row reads c
in every weight - ids not yet admitted in training, unknown ids in evaluation - in sum, mean
and none pooling and in ``lookup``, embedded and on a ``sparsecore server`` process alike,
checked against the NumPy pooling reference."""

import numpy as np
import pytest

import sparsecore as sc

from reference import pool as np_pool
from reference import random_batch
from test_ps import start_server_process, stop

DIM = 5


def _tables(pooling, default, dense=False, admission=None):
    kw = {"num_embeddings": 64} if dense else {}
    return {"t": sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=0.1), pooling=pooling, default_value=default,
                                admission=admission, **kw)}


def _rows_of(coll, ids, present, default):
    """The row each position reads: its row when present, else the default row."""
    rows = coll.lookup("t", ids).astype(np.float64)
    rows[~present] = default
    return rows


def _check(out, rows, offsets, weights, pooling):
    want = np_pool(rows, offsets, weights, pooling)
    if pooling == "none":
        out, lengths = out
        np.testing.assert_array_equal(lengths, np.diff(offsets))
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("dense", [False, True], ids=["hash", "dense"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_absent_rows_read_the_default_in_training_and_evaluation(pooling, dense, weighted):
    rng = np.random.default_rng()
    default = float(rng.uniform(-2, 2))
    pool = np.arange(64, dtype=np.int64) if dense else rng.choice(2**40, size=64, replace=False).astype(np.int64)
    coll = sc.EmbeddingCollection(_tables(pooling, default, dense, sc.Admission(count_threshold=3)), seed=3)
    for step in range(6):
        ids, offsets, weights = random_batch(rng, 9, 6, pool, weighted=weighted)
        batch = {"t": (ids, offsets, weights) if weighted else (ids, offsets)}
        # Evaluation first (unknown ids: the default), then training (ids not admitted: the default).
        present = np.isin(ids, coll.export("t")["keys"])
        _check(coll.evaluate(batch)["t"], _rows_of(coll, ids, present, default), offsets, weights, pooling)
        out = coll.forward(batch)["t"]
        present = np.isin(ids, coll.export("t")["keys"])
        _check(out, _rows_of(coll, ids, present, default), offsets, weights, pooling)
        grad = rng.standard_normal((out[0] if pooling == "none" else out).shape).astype(np.float32)
        coll.backward(batch, {"t": grad})
    unknown = np.setdiff1d(pool, coll.export("t")["keys"])
    assert unknown.size > 0
    np.testing.assert_array_equal(coll.lookup("t", unknown), np.full((unknown.size, DIM), default, np.float32))


def test_an_fp16_table_reads_the_default_rounded_to_half():
    coll = sc.EmbeddingCollection({"t": sc.TableConfig(dim=DIM, storage="fp16", default_value=0.1)}, seed=1)
    ids, offsets = np.array([7, 8, 9], dtype=np.int64), np.array([0, 3], dtype=np.int64)
    half = float(np.float16(0.1))
    np.testing.assert_allclose(coll.evaluate({"t": (ids, offsets)})["t"], np.full((1, DIM), 3 * half), rtol=1e-6)
    np.testing.assert_array_equal(coll.lookup("t", ids), np.full((3, DIM), half, np.float32))


def test_zero_default_leaves_configs_and_outputs_as_they_were():
    cfg = sc.TableConfig(dim=DIM)
    assert "default_value" not in cfg.to_dict("t")
    coll = sc.EmbeddingCollection({"t": cfg}, seed=1)
    assert not coll.evaluate({"t": (np.array([1, 2]), np.array([0, 2]))})["t"].any()


def test_default_value_round_trips_and_is_checked(tmp_path):
    cfg = sc.TableConfig(dim=DIM, default_value=-0.5)
    assert sc.TableConfig.from_dict(cfg.to_dict("t")) == cfg
    coll = sc.EmbeddingCollection({"t": cfg}, seed=1)
    coll.save(str(tmp_path / "ck"))
    loaded = sc.EmbeddingCollection.load(str(tmp_path / "ck"))
    np.testing.assert_array_equal(loaded.lookup("t", np.array([5])), np.full((1, DIM), -0.5, np.float32))
    with pytest.raises(ValueError, match="default_value must be finite"):
        sc.TableConfig(dim=DIM, default_value=float("nan")).to_dict("t")
    with pytest.raises(TypeError, match="default_value must be a float"):
        sc.TableConfig(dim=DIM, default_value="1").to_dict("t")


@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
def test_a_server_process_reads_the_same_default(pooling):
    proc, address = start_server_process("--shards", 2)
    try:
        rng = np.random.default_rng()
        pool = rng.choice(2**40, size=40, replace=False).astype(np.int64)
        tables = _tables(pooling, 0.75, admission=sc.Admission(count_threshold=2))
        embedded = sc.EmbeddingCollection(tables, seed=4)
        cluster = sc.EmbeddingCollection(tables, seed=4, server=sc.connect([address]))
        for step in range(5):
            ids, offsets, _ = random_batch(rng, 8, 5, pool)
            batch = {"t": (ids, offsets)}
            for mode in ("evaluate", "forward"):
                full = getattr(embedded, mode)(batch)["t"]
                want, got = full, getattr(cluster, mode)(batch)["t"]
                if pooling == "none":
                    want, got = want[0], got[0]
                np.testing.assert_array_equal(got, want, err_msg=f"{mode}, step {step}")
            present = np.isin(ids, embedded.export("t")["keys"])
            _check(full, _rows_of(embedded, ids, present, 0.75), offsets, None, pooling)
            grad = rng.standard_normal(want.shape).astype(np.float32)
            embedded.backward(batch, {"t": grad})
            cluster.backward(batch, {"t": grad})
        np.testing.assert_array_equal(cluster.lookup("t", pool), embedded.lookup("t", pool))
    finally:
        stop(proc)
