"""Bad input gets a clear exception naming what was wrong, and the tables stay as they were."""

import numpy as np
import pytest

import sparsecore as sc


@pytest.fixture
def emb():
    e = sc.EmbeddingCollection({
        "user": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1)),
        "item": sc.TableConfig(dim=3, optimizer=sc.Adam(lr=0.01), pooling="mean"),
    }, seed=1)
    e.forward({"user": (np.array([1, 2, 3], np.int64), np.array([0, 1, 3], np.int64))})
    return e


def snapshot(e):
    return {n: {k: v.copy() for k, v in e.export(n).items()} for n in e.names} | {"step": e.step}


def assert_unchanged(e, before):
    after = snapshot(e)
    assert after["step"] == before["step"]
    for n in e.names:
        for k in before[n]:
            np.testing.assert_array_equal(after[n][k], before[n][k])


GOOD_IDS = np.array([5, 6, 7], np.int64)
GOOD_OFF = np.array([0, 2, 3], np.int64)


@pytest.mark.parametrize("ids,offsets,err,match", [
    (GOOD_IDS.astype(np.float32), GOOD_OFF, TypeError, "ids of group 'user' must be an integer"),
    (GOOD_IDS.reshape(3, 1), GOOD_OFF, TypeError, "ids.*1 dimension"),
    (GOOD_IDS, GOOD_OFF.astype(np.float64), TypeError, "offsets of group 'user' must be an integer"),
    (GOOD_IDS, np.array([1, 2, 3], np.int64), ValueError, r"offsets\[0\] must be 0"),
    (GOOD_IDS, np.array([0, 3, 2], np.int64), ValueError, "non-decreasing"),
    (GOOD_IDS, np.array([0, 2, 4], np.int64), ValueError, r"must equal the number of ids \(3\)"),
    (GOOD_IDS, np.array([0, 2, 5], np.int64), ValueError, r"must equal the number of ids"),
    (GOOD_IDS, np.zeros(0, np.int64), ValueError, "at least one element"),
])
def test_bad_ids_or_offsets_raise_and_insert_nothing(emb, ids, offsets, err, match):
    before = snapshot(emb)
    # "item" is valid and comes first: it must not be inserted either.
    batch = {"item": (np.array([100, 101], np.int64), np.array([0, 2], np.int64)), "user": (ids, offsets)}
    with pytest.raises(err, match=match):
        emb.forward(batch)
    assert_unchanged(emb, before)


def test_weights_of_wrong_length_dtype_or_nan(emb):
    before = snapshot(emb)
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\)"):
        emb.forward({"user": (GOOD_IDS, GOOD_OFF, np.ones(2, np.float32))})
    with pytest.raises(TypeError, match="weights of group 'user' must have dtype float32"):
        emb.forward({"user": (GOOD_IDS, GOOD_OFF, np.ones(3, np.float64))})
    with pytest.raises(ValueError, match="weights contain NaN"):
        emb.forward({"user": (GOOD_IDS, GOOD_OFF, np.array([1, np.nan, 1], np.float32))})
    assert_unchanged(emb, before)


def test_unknown_group_name(emb):
    before = snapshot(emb)
    with pytest.raises(KeyError, match="unknown table 'usr'"):
        emb.forward({"usr": (GOOD_IDS, GOOD_OFF)})
    assert_unchanged(emb, before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_changes_nothing(emb, bad):
    batch = {"user": (GOOD_IDS, GOOD_OFF), "item": (GOOD_IDS, GOOD_OFF)}
    prepared = emb.prepare(batch)
    before = snapshot(emb)
    gi = np.ones((2, 3), np.float32)
    gu = np.ones((2, 4), np.float32)
    gu[1, 2] = bad
    with pytest.raises(ValueError, match="gradient of group 'user' contains NaN or Inf"):
        emb.backward(prepared, {"item": gi, "user": gu})
    assert_unchanged(emb, before)


@pytest.mark.parametrize("grad,err,match", [
    (np.ones((3, 4), np.float32), ValueError, r"must have shape \(2, 4\), got \(3, 4\)"),
    (np.ones((2, 5), np.float32), ValueError, r"must have shape \(2, 4\)"),
    (np.ones(8, np.float32), TypeError, "2 dimension"),
    (np.ones((2, 4), np.float64), TypeError, "float32"),
])
def test_gradient_of_wrong_shape_or_dtype(emb, grad, err, match):
    prepared = emb.prepare({"user": (GOOD_IDS, GOOD_OFF)})
    before = snapshot(emb)
    with pytest.raises(err, match=match):
        emb.backward(prepared, {"user": grad})
    assert_unchanged(emb, before)


def test_gradients_for_missing_or_extra_groups(emb):
    prepared = emb.prepare({"user": (GOOD_IDS, GOOD_OFF)})
    with pytest.raises(ValueError, match="missing"):
        emb.backward(prepared, {})
    with pytest.raises(ValueError, match="unexpected"):
        emb.backward(prepared, {"user": np.ones((2, 4), np.float32), "item": np.ones((2, 3), np.float32)})


def test_backward_of_an_evaluation_batch(emb):
    prepared = emb.prepare({"user": (GOOD_IDS, GOOD_OFF)}, train=False)
    with pytest.raises(ValueError, match="train=true"):
        emb.backward(prepared, {"user": np.ones((2, 4), np.float32)})


@pytest.mark.parametrize("cfg,match", [
    (sc.TableConfig(dim=0), "dim must be >= 1"),
    (sc.TableConfig(dim=-3), "dim must be >= 1"),
    (sc.TableConfig(dim=4, optimizer=sc.SGD(lr=-0.1)), "'lr' must be >= 0"),
    (sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=float("nan"))), "must be finite"),
    (sc.TableConfig(dim=4, optimizer=sc.Adam(betas=(0.9, 1.0))), "beta2"),
    (sc.TableConfig(dim=4, optimizer=sc.Adagrad(eps=0.0)), "eps"),
    (sc.TableConfig(dim=4, pooling="max"), "unknown pooling 'max'"),
    (sc.TableConfig(dim=4, init=sc.Uniform(1.0, -1.0)), "low <= high"),
    (sc.TableConfig(dim=4, init=sc.Normal(-1.0)), "std >= 0"),
])
def test_bad_table_configs(cfg, match):
    with pytest.raises(ValueError, match=match):
        sc.EmbeddingCollection({"t": cfg})


def test_bad_collection_arguments():
    with pytest.raises(TypeError, match="dim must be an int"):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=4.0)})
    with pytest.raises(ValueError, match="non-empty"):
        sc.EmbeddingCollection({})
    with pytest.raises(TypeError, match="TableConfig"):
        sc.EmbeddingCollection({"t": 4})
    with pytest.raises(TypeError, match="batch must be a mapping"):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=2)}).forward([1, 2])
