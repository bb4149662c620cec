"""Pruning: Group Lasso rows that reach exactly zero leave the table (``prune()`` on demand,
``TableConfig(prune_every=N)`` during training, embedded and on a ``sparsecore server``
process), and a planted problem loses its noise rows without losing AUC."""

import logging

import numpy as np
import pytest

import sparsecore as sc
from sparsecore.data.metrics import auc

from reference import random_batch
from test_ps import start_server_process, stop

log = logging.getLogger(__name__)
DIM = 4


def _zero_rows(coll, name):
    e = coll.export(name)
    return set(e["keys"][~e["weights"].any(axis=1)].tolist()), set(e["keys"].tolist())


@pytest.mark.parametrize("storage", ["fp32", "fp16"])
@pytest.mark.parametrize("dense", [False, True], ids=["hash", "dense"])
def test_prune_removes_exactly_the_zero_rows_of_group_lasso_tables(storage, dense):
    rng = np.random.default_rng()
    kw = {"num_embeddings": 200} if dense else {}
    pool = np.arange(200, dtype=np.int64) if dense else rng.choice(2**40, size=200, replace=False).astype(np.int64)
    tables = {
        # A strong group soft-threshold zeroes most rows an update touches; a weak one some.
        "strong": sc.TableConfig(dim=DIM, optimizer=sc.GroupLasso(lr=0.1, group_lambda=0.5), storage=storage, **kw),
        "weak": sc.TableConfig(dim=DIM, optimizer=sc.GroupLasso(lr=0.1, group_lambda=0.02), storage=storage, **kw),
        # Rows of other optimizers stay, zero or not.
        "adagrad": sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(lr=0.0), init=sc.Zeros(), storage=storage, **kw),
    }
    coll = sc.EmbeddingCollection(tables, seed=3)
    for _ in range(5):
        batch = {name: random_batch(rng, 16, 4, pool)[:2] for name in tables}
        out = coll.forward(batch)
        coll.backward(batch, {n: 0.01 * rng.standard_normal(o.shape).astype(np.float32) for n, o in out.items()})
    want = {name: _zero_rows(coll, name) for name in tables}
    assert want["strong"][0] and want["adagrad"][0]
    sizes = coll.sizes()
    removed = coll.prune()
    assert removed == {"strong": len(want["strong"][0]), "weak": len(want["weak"][0]), "adagrad": 0}
    for name in ("strong", "weak"):
        zero, keys = want[name]
        assert set(coll.export(name)["keys"].tolist()) == keys - zero
        assert coll.sizes()[name] == sizes[name] - len(zero)
        # A pruned id reads the default row (zeros), as its zero row did.
        gone = np.array(sorted(zero), dtype=np.int64)
        assert not coll.lookup(name, gone).any()
    assert coll.sizes()["adagrad"] == sizes["adagrad"]
    assert coll.prune() == {"strong": 0, "weak": 0, "adagrad": 0}


def test_pruned_rows_leave_checkpoints_and_start_afresh():
    rng = np.random.default_rng()
    coll = sc.EmbeddingCollection({"t": sc.TableConfig(dim=DIM, optimizer=sc.GroupLasso(lr=0.1, group_lambda=5.0))},
                                  seed=3)
    ids, offsets = np.array([1, 2, 3], dtype=np.int64), np.array([0, 3], dtype=np.int64)
    initial = coll.lookup("t", ids, insert=True)
    coll.backward({"t": (ids, offsets)}, {"t": rng.standard_normal((1, DIM)).astype(np.float32)})
    assert not coll.lookup("t", ids).any()
    assert coll.prune() == {"t": 3}
    assert coll.export("t")["keys"].size == 0
    np.testing.assert_array_equal(coll.lookup("t", ids, insert=True), initial)


def test_prune_every_prunes_during_training_embedded_and_on_a_server_process():
    rng = np.random.default_rng()
    pool = rng.choice(2**40, size=50, replace=False).astype(np.int64)
    tables = {"t": sc.TableConfig(dim=DIM, optimizer=sc.GroupLasso(lr=0.1, group_lambda=0.5), prune_every=3)}
    embedded = sc.EmbeddingCollection(tables, seed=5)
    plain = sc.EmbeddingCollection({"t": sc.TableConfig(dim=DIM, optimizer=sc.GroupLasso(lr=0.1, group_lambda=0.5))},
                                   seed=5)
    proc, address = start_server_process("--shards", 1)
    try:
        cluster = sc.EmbeddingCollection(tables, seed=5, server=sc.connect([address]))
        for step in range(1, 10):
            batch = {"t": random_batch(rng, 12, 4, pool)[:2]}
            outs = [c.forward(batch)["t"] for c in (embedded, cluster, plain)]
            grad = 0.01 * rng.standard_normal(outs[0].shape).astype(np.float32)
            for c in (embedded, cluster, plain):
                c.backward(batch, {"t": grad})
            np.testing.assert_array_equal(outs[1], outs[0])
            if step % 3 == 0:
                assert not _zero_rows(embedded, "t")[0]  # pruned at this step
                assert cluster.sizes() == embedded.sizes()
        assert embedded.sizes()["t"] < plain.sizes()["t"]
        with pytest.raises(ValueError, match="live on parameter servers"):
            cluster.prune()
    finally:
        stop(proc)


def test_prune_configs_are_checked():
    with pytest.raises(ValueError, match="prune_every needs the Group Lasso optimizer"):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=DIM, optimizer=sc.Adagrad(), prune_every=5)})
    with pytest.raises(ValueError, match="prune_every must be >= 0"):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=DIM, optimizer=sc.GroupLasso(), prune_every=-1)})
    with pytest.raises(TypeError, match="prune_every must be an int"):
        sc.TableConfig(dim=DIM, optimizer=sc.GroupLasso(), prune_every=2.0).to_dict("t")
    with pytest.raises(ValueError, match="'l1_reference_count' must be >= 0"):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=DIM, optimizer=sc.FTRL(l1_reference_count=-1.0))})
    cfg = sc.TableConfig(dim=DIM, optimizer=sc.GroupLasso(group_lambda=0.1, l1_reference_count=4.0), prune_every=7)
    assert sc.TableConfig.from_dict(cfg.to_dict("t")) == cfg


# The planted problem: 20 ids carry a signal (a logit effect of 0.8 to 1.5 in magnitude), 100
# are pure noise; every sample holds 3 signal ids and 5 noise ids.
NS, NN, BAG, B = 20, 100, 8, 1024


def _planted_stream(rng, n):
    sig = rng.integers(0, NS, size=(n, 3))
    noise = rng.integers(NS, NS + NN, size=(n, BAG - 3))
    return np.concatenate([sig, noise], axis=1).astype(np.int64)


def _planted_run(seed, prune_every, steps=200):
    rng = np.random.default_rng(seed)
    effect = np.concatenate([rng.choice([-1, 1], NS) * rng.uniform(0.8, 1.5, NS), np.zeros(NN)])
    # A large initial accumulator makes the Adagrad step proportional to the batch gradient
    # (proximal SGD): a noise row's summed gradient stays below the group threshold, so its
    # row stays at exactly zero, while a signal row's does not.
    opt = sc.GroupLasso(lr=1.0, group_lambda=0.008, initial_accumulator=1e6)
    coll = sc.EmbeddingCollection({"t": sc.TableConfig(dim=DIM, optimizer=opt, init=sc.Normal(std=0.05),
                                                       prune_every=prune_every)}, seed=1)
    offsets = np.arange(0, B * BAG + 1, BAG, dtype=np.int64)
    for _ in range(steps):
        ids = _planted_stream(rng, B)
        y = rng.random(B) < 1 / (1 + np.exp(-effect[ids].sum(1)))
        batch = {"t": (ids.ravel(), offsets)}
        p = 1 / (1 + np.exp(-coll.forward(batch)["t"].sum(1)))
        coll.backward(batch, {"t": np.repeat((p - y)[:, None], DIM, 1).astype(np.float32)})
    test = np.random.default_rng(seed + 1)
    ids = _planted_stream(test, 20000)
    y = test.random(len(ids)) < 1 / (1 + np.exp(-effect[ids].sum(1)))
    scores = coll.evaluate({"t": (ids.ravel(), np.arange(0, ids.size + 1, BAG, dtype=np.int64))})["t"].sum(1)
    return coll, auc(y, scores)


def test_group_lasso_prunes_the_noise_rows_of_a_planted_problem_without_losing_auc():
    seed = int(np.random.default_rng().integers(2**31))
    unpruned, auc_unpruned = _planted_run(seed, prune_every=0)
    pruned, auc_pruned = _planted_run(seed, prune_every=20)
    zero, keys = _zero_rows(unpruned, "t")
    assert keys == set(range(NS + NN))  # without pruning every row stays, zero or not
    assert zero <= set(range(NS, NS + NN)) and len(zero) >= 0.95 * NN
    removed = pruned.prune()["t"]
    kept = set(pruned.export("t")["keys"].tolist())
    assert set(range(NS)) <= kept, "a signal row was pruned"
    assert len(kept - set(range(NS))) <= 0.05 * NN, "noise rows were kept"
    assert abs(auc_pruned - auc_unpruned) <= 0.005, (auc_pruned, auc_unpruned)
    rows_before, rows_after = unpruned.sizes()["t"], pruned.sizes()["t"]
    log.info("planted problem: %d rows -> %d (%.0f%% smaller, %d removed at the end), AUC %.4f vs %.4f unpruned",
             rows_before, rows_after, 100 * (1 - rows_after / rows_before), removed, auc_pruned, auc_unpruned)
