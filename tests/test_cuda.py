"""CUDA backend through Python: the emulated path runs everywhere, the device path skips
visibly ("skipped: no device") where there is no GPU. Each case compares against the CPU
engine on fresh random inputs (duplicates, empty bags, extreme ids, odd dims)."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

BACKENDS = [
    pytest.param(True, id="emulated"),
    pytest.param(False, id="device", marks=pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")),
]

OPTIMIZERS = [
    sc.SGD(lr=0.1, weight_decay=0.01),
    sc.Momentum(lr=0.05, nesterov=True),
    sc.Adagrad(lr=0.1, initial_accumulator=0.1),
    sc.RowwiseAdagrad(lr=0.1),
    sc.Adam(lr=0.01),
    sc.AdamW(lr=0.01, weight_decay=0.1),
    sc.FTRL(lr=0.1, l1=0.001),
    sc.GroupLasso(lr=0.1, group_lambda=0.01),
    sc.FTRL(lr=0.1, l1=0.05, l1_reference_count=1.5),
    sc.GroupLasso(lr=0.1, group_lambda=0.05, l1_reference_count=1.5),
]

EXTREME = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).min + 1, np.iinfo(np.int64).max, -1, 0], np.int64)


def random_batch(rng: np.random.Generator, batch: int, max_len: int, vocab: int, weighted: bool):
    lengths = rng.integers(0, max_len + 1, size=batch)
    lengths[rng.integers(0, batch)] = 0  # at least one empty bag
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(-vocab, vocab, size=int(offsets[-1])).astype(np.int64) * 1000003
    if ids.size:
        pick = rng.random(ids.size) < 0.1
        ids[pick] = rng.choice(EXTREME, size=int(pick.sum()))
    group = (ids, offsets, rng.uniform(0.1, 2.0, ids.size).astype(np.float32)) if weighted else (ids, offsets)
    return group


def pair(tables, seed, emulate, storage="fp32"):
    return sc.EmbeddingCollection(tables, seed), sc_cuda.DeviceEmbeddingCollection(tables, seed, storage=storage, emulate=emulate)


def assert_same_training(cpu, dev, rng, steps, rtol, atol):
    for step in range(steps):
        batch = {name: random_batch(rng, 7, 4, 25, weighted=(step + i) % 2 == 1) for i, name in enumerate(cpu.names)}
        want = cpu.forward(batch)
        got = dev.forward(batch)
        grads = {}
        for name in cpu.names:
            w = want[name][0] if isinstance(want[name], tuple) else want[name]
            g = got[name][0] if isinstance(got[name], tuple) else got[name]
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"forward of {name}, step {step}")
            grads[name] = rng.standard_normal(w.shape).astype(np.float32)
        assert dev.backward(batch, grads) == cpu.backward(batch, grads)
    for name in cpu.names:
        e = dev.export(name)
        c = cpu.export(name)
        order = np.argsort(c["keys"])
        np.testing.assert_array_equal(e["keys"], c["keys"][order])
        np.testing.assert_allclose(e["weights"], c["weights"][order], rtol=rtol, atol=atol)
        np.testing.assert_array_equal(e["update_count"], c["update_count"][order])
        # The CPU table also stamps a row when it is inserted (for incremental export), the
        # device table only when it is updated: rows never updated differ by design.
        updated = e["update_count"] > 0
        np.testing.assert_array_equal(e["last_step"][updated], c["last_step"][order][updated])


@pytest.mark.parametrize("emulate", BACKENDS)
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: type(o).__name__)
def test_training_matches_cpu_engine(emulate, opt):
    rng = np.random.default_rng()
    tables = {"a": sc.TableConfig(dim=3, optimizer=opt, pooling="sum"),
              "b": sc.TableConfig(dim=18, optimizer=opt, pooling="mean")}
    cpu, dev = pair(tables, int(rng.integers(1 << 62)), emulate)
    assert_same_training(cpu, dev, rng, steps=2, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("emulate", BACKENDS)
def test_sequence_pooling_and_odd_dims(emulate):
    rng = np.random.default_rng()
    tables = {"none": sc.TableConfig(dim=5, pooling="none", optimizer=sc.Adagrad(lr=0.1)),
              "one": sc.TableConfig(dim=1, pooling="sum"),
              "wide": sc.TableConfig(dim=129, pooling="mean", optimizer=sc.RowwiseAdagrad(lr=0.1))}
    cpu, dev = pair(tables, 5, emulate)
    assert_same_training(cpu, dev, rng, steps=2, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("emulate", BACKENDS)
def test_fp16_storage_rounds_cpu_rows(emulate):
    rng = np.random.default_rng()
    tables = {"h": sc.TableConfig(dim=8, init=sc.Uniform(-1.0, 1.0))}
    cpu, dev = pair(tables, 3, emulate, storage="fp16")
    ids = rng.integers(-(1 << 62), 1 << 62, size=50)
    want = cpu.lookup("h", ids, insert=True).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(dev.lookup("h", ids, insert=True), want)
    assert dev.storage == "fp16"
    assert_same_training(cpu, dev, rng, steps=2, rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("emulate", BACKENDS)
def test_evaluation_never_inserts(emulate):
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=4)}, 1, emulate=emulate)
    ids = np.array([5, 6, 5], np.int64)
    out = dev.evaluate({"t": (ids, np.array([0, 2, 3], np.int64))})
    np.testing.assert_array_equal(out["t"], np.zeros((2, 4), np.float32))
    assert dev.table_size("t") == 0


@pytest.mark.parametrize("emulate", BACKENDS)
def test_hash_table_matches_a_dict(emulate):
    rng = np.random.default_rng()
    cpu, dev = pair({"t": sc.TableConfig(dim=2)}, 9, emulate)
    present: set[int] = set()
    for _ in range(10):
        keys = np.concatenate([rng.integers(-60, 60, size=int(rng.integers(1, 80))), rng.choice(EXTREME, 3)])
        op = rng.integers(3)
        if op == 0:
            np.testing.assert_array_equal(dev.lookup("t", keys, insert=True), cpu.lookup("t", keys, insert=True))
            present.update(int(k) for k in keys)
        elif op == 1:
            np.testing.assert_array_equal(dev.lookup("t", keys), cpu.lookup("t", keys))
        else:
            expected = len(present & set(int(k) for k in keys))
            assert dev.erase("t", keys) == expected
            cpu.erase("t", keys)
            present -= set(int(k) for k in keys)
        assert dev.table_size("t") == len(present)
    assert sorted(present) == dev.export("t")["keys"].tolist()


@pytest.mark.parametrize("emulate", BACKENDS)
def test_nan_gradient_changes_nothing(emulate):
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=2, optimizer=sc.Adam())}, 1, emulate=emulate)
    batch = {"t": (np.array([1, 2, 3], np.int64), np.array([0, 1, 3], np.int64))}
    prepared = dev.prepare(batch)
    before = dev.export("t")
    grad = np.ones((2, 2), np.float32)
    grad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dev.backward(prepared, {"t": grad})
    after = dev.export("t")
    np.testing.assert_array_equal(before["weights"], after["weights"])
    assert dev.step == 0


@pytest.mark.parametrize("emulate", BACKENDS)
def test_bad_offsets_raise_and_insert_nothing(emulate):
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=2)}, 1, emulate=emulate)
    with pytest.raises(ValueError, match="offsets"):
        dev.forward({"t": (np.array([1, 2], np.int64), np.array([0, 3], np.int64))})
    with pytest.raises(TypeError):
        dev.forward({"t": (np.array([1.5, 2.0]), np.array([0, 2], np.int64))})
    assert dev.table_size("t") == 0


def test_unknown_device_is_a_value_error():
    # device="cuda" is the deprecated spelling of DeviceEmbeddingCollection (tests/test_api.py).
    with pytest.raises(ValueError, match="device"):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=2)}, 1, device="tpu")


def test_torch_inputs_give_torch_outputs():
    torch = pytest.importorskip("torch")
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=3)}, 1, emulate=True)
    out = dev.forward({"t": (torch.tensor([4, 5, 4]), torch.tensor([0, 1, 3]))})
    assert isinstance(out["t"], torch.Tensor) and tuple(out["t"].shape) == (2, 3)


@pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")
def test_cuda_tensors_come_back_on_the_device():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("skipped: no device for torch")
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=3)}, 1)
    out = dev.forward({"t": (torch.tensor([4, 5, 4], device="cuda"), torch.tensor([0, 1, 3], device="cuda"))})
    assert out["t"].device.type == "cuda"


@pytest.mark.parametrize("emulate", BACKENDS)
@pytest.mark.parametrize("storage", ["fp32", "fp16"])
def test_vector_loads_for_dims_that_allow_them(emulate, storage):
    # dims % 4 == 0 take float4 loads (fp32) and dims % 2 == 0 __half2 loads (fp16); the
    # others (and lanes past the last full vector) the scalar path.
    rng = np.random.default_rng()
    tables = {f"d{d}": sc.TableConfig(dim=d, pooling=p, optimizer=sc.Adagrad(lr=0.1))
              for d, p in [(4, "sum"), (16, "mean"), (64, "sum"), (132, "mean"), (6, "sum"), (7, "mean")]}
    cpu, dev = pair(tables, int(rng.integers(1 << 62)), emulate, storage=storage)
    tol = 2e-5 if storage == "fp32" else 5e-3
    assert_same_training(cpu, dev, rng, steps=2, rtol=tol, atol=tol / 10 if storage == "fp32" else tol)


@pytest.mark.parametrize("emulate", BACKENDS)
def test_hot_ids_and_many_unique_ids_sum_in_position_order(emulate):
    # One id fills a third of the batch, and more than 256 unique ids take three radix passes
    # when occurrence lists are sorted. The gradient sums must follow positions, in chunks of
    # 128 occurrences whose sums are added in chunk order (sparsecore's gradient chunk):
    # against a float32 reference in that order they agree bit for bit under emulation.
    rng = np.random.default_rng()
    # SGD with lr = 1 rounds once (w - g), so rows differ only if the gradient sums do.
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=4, optimizer=sc.SGD(lr=1.0))},
                                            int(rng.integers(1 << 62)), emulate=emulate)
    lengths = rng.integers(0, 60, size=64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, 1500, size=int(offsets[-1])).astype(np.int64)
    ids[rng.random(ids.size) < 0.33] = 7
    weights = rng.uniform(0.5, 1.5, ids.size).astype(np.float32)
    batch = {"t": (ids, offsets, weights)}
    prepared = dev.prepare(batch)
    assert prepared.num_unique("t") > 256
    before = dev.export("t")
    grad = rng.standard_normal((64, 4)).astype(np.float32)
    dev.backward(prepared, {"t": grad})
    bag = np.repeat(np.arange(64), lengths)
    terms = {}
    for pos in range(ids.size):  # ascending positions
        terms.setdefault(int(ids[pos]), []).append(weights[pos] * grad[bag[pos]])
    sums = {}
    for k, ts in terms.items():  # float32 adds, chunk by chunk
        for c in range(0, len(ts), 128):
            part = np.zeros(4, np.float32)
            for t in ts[c:c + 128]:
                part = part + t
            sums[k] = part if c == 0 else sums[k] + part
    assert max(len(ts) for ts in terms.values()) > 2 * 128
    want = np.stack([before["weights"][i] - sums[int(k)] for i, k in enumerate(before["keys"])])
    after = dev.export("t")
    np.testing.assert_array_equal(after["keys"], before["keys"])
    if emulate:
        np.testing.assert_array_equal(after["weights"], want)
    else:
        np.testing.assert_allclose(after["weights"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage, weight_bytes", [("fp32", 4), ("fp16", 2)])
def test_memory_accounting_follows_storage_and_capacity(storage, weight_bytes):
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=6, optimizer=sc.Adagrad())}, 1,
                                            storage=storage, emulate=True)
    per_row = 6 * weight_bytes + 6 * 4 + 4 + 8 + 8  # weights, Adagrad state, count, last step, key
    assert dev.bytes_per_row("t") == per_row
    dev.lookup("t", np.arange(1000, dtype=np.int64), insert=True)
    assert dev.memory_bytes() == (dev.table_capacity("t") + 2) * per_row
