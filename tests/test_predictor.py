"""sparsecore.Predictor: a model directory (export_model) served by C++, equal to the training
forward; new deltas served after a poll; damaged directories refused."""

from __future__ import annotations

import copy
import json
import os
import re
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore.data import SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.torch import mlp  # noqa: E402


def make_trainer(rng, pooling="sum", dtype_default=0.0):
    cfg = SyntheticConfig.w2(num_groups=4, vocab_size=300, zipf_exponent=1.2, batch_size=128,
                             seed=int(rng.integers(1 << 30)), num_user_groups=0, samples_per_view=1)
    tables = {g: sc.TableConfig(dim=5, optimizer=sc.Adagrad(lr=0.05), pooling=pooling, default_value=dtype_default)
              for g in cfg.names()}
    model = mlp(5 * len(tables), [7])
    data = SyntheticData(cfg, num_samples=128 * 40)
    trainer = sc.Trainer(data, model, tables, progress=False)
    return trainer, cfg


def training_logits(trainer, batch):
    trainer.model.eval()
    trainer.embedding.eval()
    with torch.no_grad():
        return trainer._logits(batch).numpy()


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_predictions_equal_the_training_forward(rng, tmp_path, pooling):
    trainer, cfg = make_trainer(rng, pooling)
    trainer.fit(20)
    version = sc.export_model(tmp_path / "model", trainer, trainer.model)
    held = SyntheticData(cfg, start=1 << 30, num_samples=(1 << 30) + 300).next_batch(300)
    with sc.Predictor(tmp_path / "model") as p:
        assert p.version == version and p.features == cfg.names()
        got = p.predict(held)
    ref = training_logits(trainer, held)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * (1 + np.abs(ref).max()))


def test_a_delta_reaches_the_predictor_after_a_poll(rng, tmp_path):
    trainer, cfg = make_trainer(rng)
    trainer.fit(10)
    stream = tmp_path / "model" / "stream"
    version = sc.export_model(tmp_path / "model", trainer, trainer.model)
    exported_model = copy.deepcopy(trainer.model)
    p = sc.Predictor(tmp_path / "model")
    held = SyntheticData(cfg, start=1 << 30, num_samples=(1 << 30) + 200).next_batch(200)
    before = p.predict(held)
    trainer.fit(10)  # the rows change; the dense network is the exported one
    collection = trainer.embedding.collection
    new_version = collection.export_delta(stream, since=version)
    assert np.array_equal(p.predict(held), before)  # nothing applied yet
    assert p.poll() == 1 and p.version == new_version
    expected = sc.Subscriber(stream)
    expected.poll()
    pooled = {n: expected.lookup(n, held.sparse[n][0]) for n in cfg.names()}
    x = np.concatenate([np.add.reduceat(pooled[n], held.sparse[n][1][:-1], axis=0) if len(pooled[n]) else
                        np.zeros((200, 5), np.float32) for n in cfg.names()], axis=1)
    # bags are never empty here (min_bag 1), so reduceat is the sum of each bag
    with torch.no_grad():
        ref = exported_model.eval()(torch.from_numpy(x)).numpy()[:, 0]
    np.testing.assert_allclose(p.predict(held), ref, rtol=1e-5, atol=1e-5)


def test_concurrent_predictions_while_deltas_land(rng, tmp_path):
    trainer, cfg = make_trainer(rng)
    trainer.fit(5)
    stream = tmp_path / "model" / "stream"
    version = sc.export_model(tmp_path / "model", trainer, trainer.model)
    p = sc.Predictor(tmp_path / "model")
    held = SyntheticData(cfg, start=1 << 30, num_samples=(1 << 30) + 64).next_batch(64)
    states = {p.version: p.predict(held)}
    collection = trainer.embedding.collection
    versions = []
    for _ in range(3):
        trainer.fit(3)
        versions.append(collection.export_delta(stream, since=version if not versions else versions[-1]))
        q = sc.Predictor(tmp_path / "model")  # the state of this version (no later delta yet)
        assert q.version == versions[-1]
        states[q.version] = q.predict(held)
    seen: list[np.ndarray] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            out = p.predict(held)
            if not any(np.array_equal(out, s) for s in states.values()) and not any(
                    np.array_equal(out, s) for s in seen):
                seen.append(out)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    p.poll()
    stop.set()
    for t in threads:
        t.join()
    assert p.version == versions[-1]
    # every output observed is the output of one of the versions (each delta applies whole)
    assert not seen


def test_bad_requests_and_damaged_models_are_errors(rng, tmp_path):
    trainer, cfg = make_trainer(rng)
    trainer.fit(2)
    sc.export_model(tmp_path / "model", trainer, trainer.model)
    p = sc.Predictor(tmp_path / "model")
    held = SyntheticData(cfg, start=1 << 30, num_samples=(1 << 30) + 8).next_batch(8)
    with pytest.raises(ValueError, match="missing"):
        p.predict({n: held.sparse[n] for n in cfg.names()[1:]})
    bad = dict(held.sparse)
    ids, offsets = bad[cfg.names()[0]]
    bad[cfg.names()[0]] = (ids, offsets[:-1])
    with pytest.raises(ValueError, match="bags|offsets"):
        p.predict(bad)
    # A wrong array is named by its feature and role.
    name, (ids, offsets) = cfg.names()[0], held.sparse[cfg.names()[0]]
    bad = dict(held.sparse, **{name: (ids, offsets, np.ones(ids.size + 1, np.float32))})
    with pytest.raises(ValueError, match=re.escape(f"{name} weights must have shape ({ids.size},), got ({ids.size + 1},)")):
        p.predict(bad)
    with pytest.raises(TypeError, match=re.escape(f"{name} offsets must have dtype int64, got float64")):
        p._c.predict([(ids, offsets.astype(np.float64), None)] + [(*held.sparse[n], None) for n in cfg.names()[1:]],
                     None)
    doc = json.loads((tmp_path / "model" / "model.json").read_text())
    doc["stream"] = "../elsewhere"
    (tmp_path / "model" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="plain name"):
        sc.Predictor(tmp_path / "model")
    doc["stream"] = "stream"
    doc["features"][0]["pooling"] = "max"
    (tmp_path / "model" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="pooling 'max'"):
        sc.Predictor(tmp_path / "model")
    doc["features"][0]["pooling"] = "sum"
    doc["features"][0]["table"] = "nope"
    (tmp_path / "model" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="nope"):
        sc.Predictor(tmp_path / "model")
    os.remove(tmp_path / "model" / "model.json")
    with pytest.raises(OSError):
        sc.Predictor(tmp_path / "model")


@pytest.mark.parametrize("dtype, levels", [("int8", 255), ("int4", 15)])
def test_quantized_rows_keep_their_documented_tolerance(rng, tmp_path, dtype, levels):
    # export_format.h: each value within (max - min) / (2 * levels) of its row's trained value;
    # the Predictor serves exactly the dequantized rows.
    trainer, cfg = make_trainer(rng)
    trainer.fit(10)
    sc.export_model(tmp_path / "fp32", trainer, trainer.model)
    sc.export_model(tmp_path / "q", trainer, trainer.model, dtype=dtype)
    exact = sc.read_export(tmp_path / "fp32" / "stream" / os.listdir(tmp_path / "fp32" / "stream")[0])
    coded = sc.read_export(tmp_path / "q" / "stream" / os.listdir(tmp_path / "q" / "stream")[0])
    assert coded["dtype"] == dtype
    for name, t in exact["tables"].items():
        q = coded["tables"][name]
        assert np.array_equal(q["keys"], t["keys"])
        w = t["weights"]
        bound = (w.max(axis=1) - w.min(axis=1))[:, None] / (2 * levels)
        err = np.abs(q["weights"] - w)
        assert np.all(err <= bound * (1 + 1e-5) + 1e-7), f"{name}: {float((err - bound).max())} over the bound"
    held = SyntheticData(cfg, start=1 << 30, num_samples=(1 << 30) + 100).next_batch(100)
    p = sc.Predictor(tmp_path / "q")
    rows = sc.Subscriber(tmp_path / "q" / "stream")
    rows.poll()
    x = np.concatenate([np.add.reduceat(rows.lookup(n, held.sparse[n][0]), held.sparse[n][1][:-1], axis=0)
                        for n in cfg.names()], axis=1)  # bags are never empty (min_bag 1)
    with torch.no_grad():
        ref = trainer.model.eval()(torch.from_numpy(x)).numpy()[:, 0]
    np.testing.assert_allclose(p.predict(held), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rows.lookup(cfg.names()[0], coded["tables"][cfg.names()[0]]["keys"]),
                                  coded["tables"][cfg.names()[0]]["weights"])


def test_a_large_batch_equals_its_rows_predicted_alone_whatever_the_thread_count(rng, tmp_path):
    # Large enough that the row reads and the dense layers are split over the compute pool.
    trainer, cfg = make_trainer(rng)
    trainer.fit(10)
    sc.export_model(tmp_path / "model", trainer, trainer.model)
    held = SyntheticData(cfg, start=1 << 30, num_samples=(1 << 30) + 3000).next_batch(3000)
    assert sum(len(held.sparse[n][0]) for n in cfg.names()) > 4096
    previous = sc._core.num_threads()
    try:
        with sc.Predictor(tmp_path / "model") as p:
            outs = []
            for threads in (1, 2, 3):
                sc._core.set_num_threads(threads)
                outs.append(p.predict(held))
            for n in (0, 1, 2999):
                bag = {g: (held.sparse[g][0][held.sparse[g][1][n]:held.sparse[g][1][n + 1]],
                           np.array([0, held.sparse[g][1][n + 1] - held.sparse[g][1][n]], np.int64))
                       for g in cfg.names()}
                assert p.predict(bag)[0].tobytes() == outs[0][n].tobytes()
    finally:
        sc._core.set_num_threads(previous)
    for out in outs[1:]:
        assert out.tobytes() == outs[0].tobytes()
    ref = training_logits(trainer, held)
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-6 * (1 + np.abs(ref).max()))


def test_a_full_export_that_changes_a_tables_dim_is_refused_at_predict(rng, tmp_path):
    # The graph's inputs keep their widths: rows of another width are never pooled into them.
    trainer, cfg = make_trainer(rng)
    trainer.fit(3)
    version = sc.export_model(tmp_path / "model", trainer, trainer.model)
    p = sc.Predictor(tmp_path / "model")
    held = SyntheticData(cfg, start=1 << 30, num_samples=(1 << 30) + 20).next_batch(20)
    before = p.predict(held)
    wider = sc.EmbeddingCollection({g: sc.TableConfig(dim=9, optimizer=sc.SGD(lr=0.1)) for g in cfg.names()}, seed=2)
    name = cfg.names()[0]
    bags = {name: (np.arange(5, dtype=np.int64), np.arange(6, dtype=np.int64))}
    while wider.step <= version:  # a newer full export than the model's
        wider.forward(bags)
        wider.backward(bags, {name: np.ones((5, 9), np.float32)})
    wider.export_full(tmp_path / "model" / "stream")
    assert p.poll() == 1
    with pytest.raises(ValueError, match=f"table '{name}' has dim 9"):
        p.predict(held)
    assert before.shape == (20,)
