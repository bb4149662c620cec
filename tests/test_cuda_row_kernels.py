"""Row kernels of the device store (initialisation, row moves on growth and row imports)
split each row over a team of lanes, with float4 accesses where the dim allows and a scalar
tail otherwise. Whatever the split, the rows must carry the CPU engine's bits: each case
trains the CPU collection and the device collection (emulated, and a real one where a GPU is
present) on the same batches, every rule and dims 1 to 129, and compares rows and state
exactly."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

from test_cuda import OPTIMIZERS, random_batch

BACKENDS = [
    pytest.param(True, id="emulated"),
    pytest.param(False, id="device", marks=pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")),
]
DIMS = (1, 3, 4, 18, 64, 129)


def _tables(opt, init=None):
    return {f"d{d}": sc.TableConfig(dim=d, optimizer=opt, pooling="sum" if d % 2 else "mean",
                                    init=init or sc.Normal(0.1)) for d in DIMS}


def _assert_same_rows(cpu, dev):
    for name in cpu.names:
        e, c = dev.export(name), cpu.export(name)
        order = np.argsort(c["keys"])
        np.testing.assert_array_equal(e["keys"], c["keys"][order])
        np.testing.assert_array_equal(e["weights"], c["weights"][order], err_msg=name)
        np.testing.assert_array_equal(e["state"], c["state"][order], err_msg=name)
        np.testing.assert_array_equal(e["update_count"], c["update_count"][order])


@pytest.mark.parametrize("emulate", BACKENDS)
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: type(o).__name__)
def test_every_rule_gives_the_cpu_bits_for_every_dim(emulate, opt):
    rng = np.random.default_rng(7)
    tables = _tables(opt)
    cpu = sc.EmbeddingCollection(tables, 9)
    dev = sc_cuda.DeviceEmbeddingCollection(tables, 9, emulate=emulate)
    for step in range(3):
        batch = {name: random_batch(rng, 6, 4, 20, weighted=step % 2 == 1) for name in cpu.names}
        want = cpu.forward(batch)
        np.testing.assert_array_equal(dev.forward(batch)[cpu.names[0]], want[cpu.names[0]])
        grads = {n: (rng.standard_normal(w.shape) * 2).astype(np.float32) for n, w in want.items()}
        assert dev.backward(batch, grads) == cpu.backward(batch, grads)
    _assert_same_rows(cpu, dev)


@pytest.mark.parametrize("emulate", BACKENDS)
@pytest.mark.parametrize("storage", ["fp32", "fp16"])
@pytest.mark.parametrize("init", [sc.Uniform(-1.0, 1.0), sc.TruncatedNormal(std=0.5)], ids=["uniform", "truncnormal"])
def test_initial_rows_moved_by_growth_and_imported_keep_their_bits(emulate, storage, init):
    tables = {name: sc.TableConfig(dim=t.dim, optimizer=sc.Adagrad(lr=0.1, initial_accumulator=0.3), init=init,
                                   storage=storage) for name, t in _tables(None).items()}
    cpu = sc.EmbeddingCollection(tables, 4)
    dev = sc_cuda.DeviceEmbeddingCollection(tables, 4, storage=storage, emulate=emulate)
    ids = np.arange(-600, 600, dtype=np.int64) * 7919  # enough to grow every table several times
    for name in cpu.names:
        np.testing.assert_array_equal(dev.lookup(name, ids, insert=True), cpu.lookup(name, ids, insert=True))
    _assert_same_rows(cpu, dev)
    back = sc_cuda.DeviceEmbeddingCollection.from_host(cpu, storage=storage, emulate=emulate)
    _assert_same_rows(cpu, back)
