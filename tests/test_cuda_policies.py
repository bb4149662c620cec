"""Row policies on the device store, checked against the CPU store bit for bit: feature
admission (every filter, decided by the same code), the default row of absent ids, and the
metadata stamped on inserts. Each case trains the CPU collection and an emulated device
collection (and a real one where a GPU is present) on the same random stream and compares
admitted ids, statistics and rows exactly."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

DEVICES = [
    pytest.param(True, id="emulated"),
    pytest.param(False, id="device", marks=pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")),
]

ADMISSIONS = {
    "count": dict(count_threshold=3),
    "probability": dict(probability=0.4),
    "bloom": dict(count_threshold=2, bloom_capacity=500, bloom_fp_rate=0.05),
    "frequency": dict(frequency_horizon=4.0, frequency_threshold=0.6),
    "lists": dict(count_threshold=4, allow=np.arange(0, 40, 7, dtype=np.int64), deny=np.arange(3, 40, 7, dtype=np.int64)),
}


def _tables(admission=None, default=0.0, pooling="sum", dim=5):
    return {
        "a": sc.TableConfig(dim=dim, optimizer=sc.Adagrad(lr=0.1), pooling=pooling, default_value=default,
                            admission=None if admission is None else sc.Admission(**admission)),
        "b": sc.TableConfig(dim=3, optimizer=sc.SGD(lr=0.1), pooling="mean"),
    }


def _pair(tables, emulate, seed=5):
    return sc.EmbeddingCollection(tables, seed), sc_cuda.DeviceEmbeddingCollection(tables, seed, emulate=emulate)


def _batch(rng, vocab=40, bags=6, max_len=5, weighted=False):
    out = {}
    for name in ("a", "b"):
        lengths = rng.integers(0, max_len + 1, size=bags)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = rng.integers(0, vocab, size=int(offsets[-1])).astype(np.int64)
        out[name] = (ids, offsets, rng.uniform(0.5, 1.5, ids.size).astype(np.float32)) if weighted else (ids, offsets)
    return out


def _same_rows(cpu, dev):
    for name in cpu.names:
        want, got = cpu.export(name), dev.export(name)
        order = np.argsort(want["keys"], kind="stable")  # the CPU store exports in slot order
        for field in ("keys", "weights", "state", "update_count", "last_step"):
            np.testing.assert_array_equal(np.asarray(got[field]), np.asarray(want[field])[order],
                                          err_msg=f"table {name}: {field}")


def _train_both(cpu, dev, rng, steps, weighted=False, evaluate=True):
    for step in range(steps):
        batch = _batch(rng, weighted=weighted)
        if evaluate:
            for name, want in cpu.evaluate(batch).items():
                got = dev.evaluate(batch)[name]
                np.testing.assert_array_equal(got[0] if isinstance(got, tuple) else got,
                                              want[0] if isinstance(want, tuple) else want,
                                              err_msg=f"evaluation of {name}, step {step}")
        prepared_cpu, prepared_dev = cpu.prepare(batch), dev.prepare(batch)
        want = cpu.forward(prepared_cpu)
        got = dev.forward(prepared_dev)
        grads = {}
        for name in cpu.names:
            w = want[name][0] if isinstance(want[name], tuple) else want[name]
            g = got[name][0] if isinstance(got[name], tuple) else got[name]
            np.testing.assert_array_equal(g, w, err_msg=f"forward of {name}, step {step}")
            grads[name] = rng.standard_normal(w.shape).astype(np.float32)
        cpu.backward(prepared_cpu, grads)
        dev.backward(prepared_dev, grads)


@pytest.mark.parametrize("emulate", DEVICES)
@pytest.mark.parametrize("kind", sorted(ADMISSIONS))
def test_admission_on_the_device_admits_the_ids_the_cpu_store_admits(emulate, kind):
    rng = np.random.default_rng(abs(hash(kind)) % 2**32)
    cpu, dev = _pair(_tables(ADMISSIONS[kind]), emulate)
    _train_both(cpu, dev, rng, steps=8)
    assert dev.admission_stats() == cpu.admission_stats()
    assert 0 < cpu.table_size("a") < 40  # some ids admitted, some not
    _same_rows(cpu, dev)


@pytest.mark.parametrize("emulate", DEVICES)
@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
def test_absent_ids_read_the_default_row_on_the_device(emulate, pooling):
    rng = np.random.default_rng(11)
    tables = _tables(dict(count_threshold=2), default=-0.375, pooling=pooling)
    cpu, dev = _pair(tables, emulate)
    _train_both(cpu, dev, rng, steps=5, weighted=True)
    unknown = np.array([1000, 2000, -5], np.int64)
    np.testing.assert_array_equal(dev.lookup("a", unknown), np.full((3, 5), -0.375, np.float32))
    np.testing.assert_array_equal(dev.lookup("a", unknown), cpu.lookup("a", unknown))
    _same_rows(cpu, dev)


@pytest.mark.parametrize("emulate", DEVICES)
def test_fp16_rows_read_the_default_rounded_as_the_cpu_store_does(emulate):
    tables = {"a": sc.TableConfig(dim=4, optimizer=sc.SGD(lr=0.1), default_value=0.1, storage="fp16")}
    cpu = sc.EmbeddingCollection(tables, 1)
    dev = sc_cuda.DeviceEmbeddingCollection(tables, 1, emulate=emulate)
    ids = np.array([3, 9], np.int64)
    np.testing.assert_array_equal(dev.lookup("a", ids), cpu.lookup("a", ids))
    batch = {"a": (ids, np.array([0, 2], np.int64))}
    np.testing.assert_array_equal(dev.evaluate(batch)["a"], cpu.evaluate(batch)["a"])


@pytest.mark.parametrize("emulate", DEVICES)
def test_inserts_are_stamped_with_the_step_they_can_first_take_part_in(emulate):
    rng = np.random.default_rng(2)
    cpu, dev = _pair(_tables(), emulate)
    _train_both(cpu, dev, rng, steps=3, evaluate=False)
    fresh = np.array([777, 778], np.int64)
    cpu.lookup("a", fresh, insert=True)
    dev.lookup("a", fresh, insert=True)
    rows = dev.export("a")
    stamped = rows["last_step"][np.isin(rows["keys"], fresh)]
    np.testing.assert_array_equal(stamped, [cpu.step + 1] * 2)
    _same_rows(cpu, dev)


@pytest.mark.parametrize("emulate", DEVICES)
def test_gradients_of_ids_not_admitted_are_dropped_and_counted(emulate):
    _, dev = _pair(_tables(dict(count_threshold=2)), emulate)
    batch = {"a": (np.array([1, 2, 2], np.int64), np.array([0, 3], np.int64)),
             "b": (np.array([1], np.int64), np.array([0, 1], np.int64))}
    prepared = dev.prepare(batch)
    out = dev.forward(prepared)
    np.testing.assert_array_equal(out["a"], np.zeros((1, 5), np.float32))
    dev.backward(prepared, {"a": np.ones((1, 5), np.float32), "b": np.ones((1, 3), np.float32)})
    assert dev.table_size("a") == 0
    assert dev.admission_stats()["a"] == {"admitted": 0, "pending": 2, "rejected": 2, "dropped_gradients": 2}
    dev.forward(batch)  # second sighting of 1 and 2: both admitted
    assert dev.table_size("a") == 2
    assert dev.admission_stats()["a"]["admitted"] == 2


@pytest.mark.parametrize("emulate", DEVICES)
def test_admission_state_survives_a_checkpoint_of_the_device_store(emulate, tmp_path):
    rng = np.random.default_rng(4)
    cpu, dev = _pair(_tables(dict(count_threshold=3)), emulate)
    _train_both(cpu, dev, rng, steps=3, evaluate=False)
    dev.save(tmp_path / "ckpt")
    again = sc_cuda.DeviceEmbeddingCollection.load(tmp_path / "ckpt", emulate=emulate)
    assert again.admission_stats() == cpu.admission_stats()
    _train_both(cpu, again, rng, steps=3, evaluate=False)
    assert again.admission_stats() == cpu.admission_stats()
    _same_rows(cpu, again)
