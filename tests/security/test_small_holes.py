"""Small holes: a dense_push learning rate that is NaN, Inf or negative is refused; a dim that
does not fit an int is refused, not truncated; an update that overflows rows to Inf raises and
leaves every row of the call as it was; erase racing backward never writes a freed row."""

import json
import threading

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import _core


def _snapshot(coll, names):
    out = {}
    for name in names:
        e = coll.export(name)
        order = np.argsort(e["keys"])
        out[name] = {k: v[order] for k, v in e.items()}
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for field in a[name]:
            np.testing.assert_array_equal(a[name][field], b[name][field], err_msg=f"{name}.{field}")


@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize("lr", [float("nan"), float("inf"), float("-inf"), -0.5])
def test_dense_push_refuses_a_bad_learning_rate(remote, lr):
    server = sc.Server(port=0) if remote else sc.Server()
    try:
        ps = server.client()
        before = ps.dense_pull("w", 8, init=0.25)
        with pytest.raises(ValueError, match="learning rate"):
            ps.dense_push("w", np.ones(8, np.float32), lr=lr)
        np.testing.assert_array_equal(ps.dense_pull("w", 8), before)
        ps.dense_push("w", np.ones(8, np.float32), lr=0.5)  # a good one still applies
        np.testing.assert_array_equal(ps.dense_pull("w", 8), before - 0.5)
    finally:
        server.stop()


@pytest.mark.parametrize("init", [float("inf"), 1e300])
def test_dense_variable_init_must_be_finite(init):
    ps = sc.Server().client()
    with pytest.raises(ValueError, match="init"):
        ps.dense_pull("w", 4, init=init)


@pytest.mark.parametrize("dim", [2**32 + 8, 2**31, 2**20 + 1, 0, -3])
def test_a_dim_that_does_not_fit_is_refused_in_python(dim):
    with pytest.raises(ValueError, match="dim"):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=dim)})


@pytest.mark.parametrize("field,value", [("dim", 2**32 + 8), ("dim", -(2**32) + 8), ("shard_bits", 2**32 + 2)])
def test_a_size_that_narrows_is_refused_at_the_cpp_boundary(field, value):
    cfg = json.loads(sc.config.tables_to_json({"t": sc.TableConfig(dim=8)}))
    cfg[0][field] = value
    with pytest.raises(ValueError, match=field):
        _core.EmbeddingCollection(json.dumps(cfg), 0)
    ps = sc.Server().client()
    with pytest.raises(ValueError, match=field):
        ps._c.create_table(json.dumps(cfg[0]), 0)


def _bags(ids):
    ids = np.asarray(ids, np.int64)
    return ids, np.arange(ids.size + 1, dtype=np.int64)


@pytest.mark.parametrize("opt,storage,scale", [
    (sc.SGD(lr=1.0), "fp32", 3e38),        # two occurrences of one id sum to Inf
    (sc.Adagrad(lr=0.1), "fp32", 1e20),    # the squared gradient overflows the state
    (sc.SGD(lr=1.0), "fp16", 1e5),         # finite in fp32, beyond the largest half
])
def test_an_update_that_overflows_changes_no_row_of_the_call(opt, storage, scale):
    tables = {"a": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1)),
              "b": sc.TableConfig(dim=3, optimizer=opt, storage=storage)}
    coll = sc.EmbeddingCollection(tables, seed=3)
    warm = {"a": _bags(np.arange(50)), "b": _bags(np.arange(40))}
    coll.forward(warm)
    coll.backward(warm, {"a": np.ones((50, 4), np.float32), "b": np.ones((40, 3), np.float32)})
    before, step = _snapshot(coll, tables), coll.step
    batch = {"a": _bags(np.arange(50)), "b": (np.array([7, 7, 8, 9], np.int64), np.array([0, 4], np.int64))}
    coll.forward(batch)
    big = np.full((1, 3), scale, np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        coll.backward(batch, {"a": np.ones((50, 4), np.float32), "b": big})
    _assert_same(_snapshot(coll, tables), before)
    assert coll.step == step
    for name in tables:
        assert np.isfinite(coll.export(name)["weights"]).all()
    coll.backward(batch, {"a": np.ones((50, 4), np.float32), "b": np.ones((1, 3), np.float32)})  # still trains


def test_a_push_that_overflows_rows_is_refused_and_changes_nothing():
    with sc.Server(port=0) as server:
        ps = server.client()
        ps.create_table("t", sc.TableConfig(dim=2, optimizer=sc.Adagrad(lr=0.1)), seed=1)
        ids = np.arange(30, dtype=np.int64)
        ps.push("t", ids, np.ones((30, 2), np.float32))
        before = ps.lookup("t", ids)
        grads = np.ones((30, 2), np.float32)
        grads[17] = 1e20
        with pytest.raises(ValueError, match="non-finite"):
            ps.push("t", ids, grads)
        np.testing.assert_array_equal(ps.lookup("t", ids), before)


def test_erase_racing_backward_never_writes_a_freed_row():
    cfg = sc.TableConfig(dim=8, optimizer=sc.SGD(lr=0.01))
    coll = sc.EmbeddingCollection({"t": cfg}, seed=1)
    trained = np.arange(2000, dtype=np.int64)
    stop = threading.Event()
    errors = []

    def train():
        rng = np.random.default_rng(1)
        try:
            while not stop.is_set():
                ids = rng.choice(trained, 400)
                batch = {"t": (ids, np.arange(0, 401, 4, dtype=np.int64))}
                coll.forward(batch)
                coll.backward(batch, {"t": np.ones((100, 8), np.float32)})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def churn():
        # Frees trained rows and fills the freed slots with ids that are never trained.
        fresh = 10**9
        try:
            for _ in range(150):
                coll.erase("t", trained[:1000])
                coll.lookup("t", np.arange(fresh, fresh + 1000, dtype=np.int64), insert=True)
                fresh += 1000
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            stop.set()

    threads = [threading.Thread(target=train) for _ in range(2)] + [threading.Thread(target=churn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    e = coll.export("t")
    never_trained = e["keys"] >= 10**9
    assert never_trained.any()
    assert (e["update_count"][never_trained] == 0).all(), int((e["update_count"][never_trained] > 0).sum())
    # Stamped when inserted (the step after the one in progress), never by an update.
    assert (e["last_step"][never_trained] <= coll.step + 1).all()
