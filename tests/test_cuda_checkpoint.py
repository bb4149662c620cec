"""Checkpoints of the device collection are the CPU engine's checkpoints: a model trained on
the device (here: the emulator, and the GPU where there is one) loads on the CPU and the
other way round, with weights, optimizer state, metadata and step."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

from test_cuda import BACKENDS, random_batch

TABLES = {"a": sc.TableConfig(dim=4, optimizer=sc.Adam(lr=0.01)),
          "b": sc.TableConfig(dim=3, pooling="mean", optimizer=sc.Adagrad(lr=0.1))}


def train(emb, rng, steps):
    for _ in range(steps):
        batch = {n: random_batch(rng, 6, 4, 30, weighted=False) for n in TABLES}
        out = emb.forward(batch)
        emb.backward(batch, {n: rng.standard_normal(np.asarray(o).shape).astype(np.float32) for n, o in out.items()})


def assert_same_rows(a, b, rtol=0.0, atol=0.0):
    assert a.step == b.step
    for name in TABLES:
        x, y = a.export(name), b.export(name)
        ox, oy = np.argsort(x["keys"]), np.argsort(y["keys"])
        np.testing.assert_array_equal(x["keys"][ox], y["keys"][oy])
        for field in ("weights", "state"):
            np.testing.assert_allclose(x[field][ox], y[field][oy], rtol=rtol, atol=atol, err_msg=field)
        for field in ("update_count", "last_step"):
            np.testing.assert_array_equal(x[field][ox], y[field][oy], err_msg=field)


@pytest.mark.parametrize("emulate", BACKENDS)
def test_device_checkpoint_loads_on_the_cpu(emulate, tmp_path):
    rng = np.random.default_rng()
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, int(rng.integers(1 << 62)), emulate=emulate)
    train(dev, rng, 3)
    dev.save(tmp_path / "ckpt")
    cpu = sc.EmbeddingCollection.load(tmp_path / "ckpt")
    assert_same_rows(dev, cpu)
    assert cpu.seed == dev.seed


@pytest.mark.parametrize("emulate", BACKENDS)
def test_cpu_checkpoint_loads_on_the_device_and_trains_on(emulate, tmp_path):
    rng = np.random.default_rng()
    cpu = sc.EmbeddingCollection(TABLES, int(rng.integers(1 << 62)))
    train(cpu, rng, 3)
    cpu.save(tmp_path / "ckpt")
    dev = sc_cuda.DeviceEmbeddingCollection.load(tmp_path / "ckpt", emulate=emulate)
    assert_same_rows(cpu, dev)
    seed = int(rng.integers(1 << 62))
    train(cpu, np.random.default_rng(seed), 2)
    train(dev, np.random.default_rng(seed), 2)
    assert_same_rows(cpu, dev, rtol=2e-5, atol=2e-6)


def test_fp16_load_rounds_the_weights_once(tmp_path):
    rng = np.random.default_rng()
    cpu = sc.EmbeddingCollection(TABLES, 11)
    train(cpu, rng, 2)
    cpu.save(tmp_path / "ckpt")
    dev = sc_cuda.DeviceEmbeddingCollection.load(tmp_path / "ckpt", storage="fp16", emulate=True)
    assert dev.storage == "fp16"
    for name in TABLES:
        c, d = cpu.export(name), dev.export(name)
        order = np.argsort(c["keys"])
        np.testing.assert_array_equal(d["weights"], c["weights"][order].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(d["state"], c["state"][order])


def test_restore_swaps_rows_and_refuses_other_models(tmp_path):
    rng = np.random.default_rng()
    cpu = sc.EmbeddingCollection(TABLES, 5)
    train(cpu, rng, 2)
    cpu.save(tmp_path / "ckpt")
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, 5, emulate=True)
    train(dev, rng, 1)
    stale = dev.prepare({"a": random_batch(rng, 3, 2, 5, weighted=False)})
    dev.restore(tmp_path / "ckpt")
    assert_same_rows(cpu, dev)
    with pytest.raises(ValueError, match="does not belong"):
        dev.forward(stale)
    other = sc.EmbeddingCollection({"a": sc.TableConfig(dim=5), "b": sc.TableConfig(dim=3)}, 5)
    other.save(tmp_path / "other")
    with pytest.raises(ValueError, match="dim"):
        dev.restore(tmp_path / "other")
    assert_same_rows(cpu, dev)  # unchanged
    with pytest.raises(ValueError, match="already exists"):
        dev.save(tmp_path / "ckpt")
    dev.save(tmp_path / "ckpt", overwrite=True)


def test_truncated_checkpoint_is_refused(tmp_path):
    cpu = sc.EmbeddingCollection(TABLES, 5)
    train(cpu, np.random.default_rng(), 1)
    cpu.save(tmp_path / "ckpt")
    victim = max((p for p in (tmp_path / "ckpt").iterdir() if p.suffix == ".rows"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.raises(Exception, match="truncated|bytes"):
        sc_cuda.DeviceEmbeddingCollection.load(tmp_path / "ckpt", emulate=True)


def test_to_host_and_from_host_round_trip():
    rng = np.random.default_rng()
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, 8, emulate=True)
    train(dev, rng, 2)
    host = dev.to_host()
    assert type(host) is sc.EmbeddingCollection
    assert_same_rows(dev, host)
    back = sc_cuda.DeviceEmbeddingCollection.from_host(host, emulate=True)
    assert_same_rows(back, host)
    with pytest.raises(TypeError, match="CPU"):
        sc_cuda.DeviceEmbeddingCollection.from_host(dev, emulate=True)
