"""Zero-copy CUDA inputs: arrays exposing ``__cuda_array_interface__`` (or DLPack) go to the
kernels in place and outputs are allocated in the same framework.

Under emulation device memory is host memory, so these tests hand an emulated collection
host buffers dressed as CUDA arrays (FakeCudaArray): that runs the interface parsing, the
device-memory entry points and the on-device validation with no GPU. On a machine with a
GPU the torch / CuPy cases run on the device; elsewhere they say "skipped: no device"."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

from test_cuda import random_batch


class FakeCudaArray:
    """Host memory presented through ``__cuda_array_interface__`` (v3)."""

    def __init__(self, a: np.ndarray, **overrides):
        self.host = np.ascontiguousarray(a)
        self.__cuda_array_interface__ = {"shape": self.host.shape, "typestr": self.host.dtype.str,
                                         "data": (self.host.ctypes.data, False), "strides": None,
                                         "version": 3, "stream": None, **overrides}


def fake(group):
    return tuple(FakeCudaArray(a) for a in group)


def emulated(tables, seed):
    return sc_cuda.DeviceEmbeddingCollection(tables, seed, emulate=True)


TABLES = {"sum": sc.TableConfig(dim=7, optimizer=sc.Adagrad(lr=0.1)),
          "mean": sc.TableConfig(dim=16, pooling="mean", optimizer=sc.Adam(lr=0.01)),
          "none": sc.TableConfig(dim=3, pooling="none", optimizer=sc.SGD(lr=0.1))}


def test_device_arrays_train_like_host_arrays():
    rng = np.random.default_rng()
    seed = int(rng.integers(1 << 62))
    host, dev = emulated(TABLES, seed), emulated(TABLES, seed)
    for step in range(2):
        batch = {n: random_batch(rng, 6, 4, 20, weighted=(i + step) % 2 == 0) for i, n in enumerate(TABLES)}
        want = host.forward(batch)
        prepared = dev.prepare({n: fake(g) for n, g in batch.items()})
        assert prepared.space == "device"
        got = dev.forward(prepared)
        grads = {}
        for n in TABLES:
            w, g = want[n], got[n]
            if isinstance(w, tuple):
                np.testing.assert_array_equal(g[1], w[1])
                w, g = w[0], g[0]
            assert isinstance(g, np.ndarray)  # the emulator's device memory is host memory
            np.testing.assert_array_equal(g, w)
            grads[n] = rng.standard_normal(w.shape).astype(np.float32)
        fake_grads = {n: FakeCudaArray(g) for n, g in grads.items()}
        assert dev.backward(prepared, fake_grads) == host.backward(batch, grads)
    for n in TABLES:
        a, b = host.export(n), dev.export(n)
        for field in a:
            np.testing.assert_array_equal(b[field], a[field])


def test_device_lookup_and_erase():
    rng = np.random.default_rng()
    host, dev = emulated(TABLES, 3), emulated(TABLES, 3)
    ids = rng.integers(-(1 << 62), 1 << 62, size=40)
    ids[::5] = ids[0]
    np.testing.assert_array_equal(dev.lookup("sum", FakeCudaArray(ids), insert=True),
                                  host.lookup("sum", ids, insert=True))
    assert dev.erase("sum", FakeCudaArray(ids[:10])) == host.erase("sum", ids[:10])
    np.testing.assert_array_equal(dev.lookup("sum", FakeCudaArray(ids)), host.lookup("sum", ids))
    assert dev.table_size("sum") == host.table_size("sum")


BAD_INTERFACES = [
    pytest.param({"typestr": "<f8"}, TypeError, "dtype int64", id="dtype"),
    pytest.param({"shape": (2, 2)}, TypeError, "dimension", id="rank"),
    pytest.param({"strides": (16,)}, ValueError, "C-contiguous", id="strides"),
    pytest.param({"mask": object()}, ValueError, "mask", id="mask"),
    pytest.param({"data": (0, False)}, ValueError, "null", id="null"),
    pytest.param({"data": None}, ValueError, "data", id="no-data"),
]


@pytest.mark.parametrize("override, error, match", BAD_INTERFACES)
def test_bad_interfaces_are_rejected_naming_the_array(override, error, match):
    dev = emulated(TABLES, 1)
    ids = FakeCudaArray(np.array([1, 2, 3, 4], np.int64), **override)
    with pytest.raises(error, match=match):
        dev.forward({"sum": (ids, FakeCudaArray(np.array([0, 2, 4], np.int64)))})
    assert dev.table_size("sum") == 0


def test_one_memory_space_per_batch():
    dev = emulated(TABLES, 1)
    with pytest.raises(TypeError, match="one memory space"):
        dev.forward({"sum": (FakeCudaArray(np.array([1, 2], np.int64)), np.array([0, 2], np.int64))})
    prepared = dev.prepare({"sum": fake((np.array([1, 2], np.int64), np.array([0, 2], np.int64)))})
    with pytest.raises(TypeError, match="CUDA array"):
        dev.backward(prepared, {"sum": np.ones((1, 7), np.float32)})
    assert dev.step == 0


def test_offsets_switch_reads_host_batches_and_refuses_start_offsets_on_the_device():
    dev, ref = emulated(TABLES, 4), sc.EmbeddingCollection(TABLES, 4)
    ids, starts = np.array([5, 6, 7], np.int64), np.array([0, 1, 3], np.int64)  # the last bag is empty
    want = ref.forward({"sum": (ids, starts)}, include_last_offset=False)["sum"]
    got = dev.forward({"sum": (ids, starts)}, include_last_offset=False)["sum"]
    assert got.shape == (3, 7)
    np.testing.assert_array_equal(got, want)
    assert dev.backward({"sum": (ids, starts)}, {"sum": np.ones((3, 7), np.float32)}, include_last_offset=False) == 1
    with pytest.raises(ValueError, match="include_last_offset=False"):
        dev.forward({"sum": fake((ids, starts))}, include_last_offset=False)
    with pytest.raises(TypeError, match="include_last_offset"):
        dev.prepare({"sum": fake((ids, starts))}, include_last_offset=1)
    prepared = dev.prepare({"sum": fake((ids, np.array([0, 1, 3], np.int64)))}, include_last_offset=True)
    assert prepared.space == "device"
    assert dev.step == 1


def test_device_inputs_are_validated_before_anything_changes():
    dev = emulated(TABLES, 1)
    ids = np.array([1, 2, 3], np.int64)
    with pytest.raises(ValueError, match="offsets"):
        dev.forward({"sum": fake((ids, np.array([0, 4], np.int64)))})
    with pytest.raises(ValueError, match="non-decreasing"):
        dev.forward({"sum": fake((ids, np.array([0, 2, 1, 3], np.int64)))})
    with pytest.raises(ValueError, match="weights contain NaN"):
        dev.forward({"sum": fake((ids, np.array([0, 3], np.int64), np.array([1, np.nan, 1], np.float32)))})
    with pytest.raises(ValueError, match="shape"):
        dev.forward({"sum": fake((ids, np.array([0, 3], np.int64), np.ones(2, np.float32)))})
    assert dev.table_size("sum") == 0
    batch = {"sum": fake((ids, np.array([0, 1, 3], np.int64)))}
    prepared = dev.prepare(batch)
    before = dev.export("sum")
    grad = np.ones((2, 7), np.float32)
    grad[1, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        dev.backward(prepared, {"sum": FakeCudaArray(grad)})
    with pytest.raises(ValueError, match="shape"):
        dev.backward(prepared, {"sum": FakeCudaArray(np.ones((3, 7), np.float32))})
    np.testing.assert_array_equal(dev.export("sum")["weights"], before["weights"])
    assert dev.step == 0


def test_real_cuda_arrays_cross_through_host_memory_under_emulation():
    dev = emulated(TABLES, 1)
    assert dev._space(np.zeros(2, np.int64)) == "host"
    assert dev._space(FakeCudaArray(np.zeros(2, np.int64))) == "device"


# ----------------------------------------------------------------------------- on a device
needs_device = pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")


@needs_device
def test_torch_cuda_in_torch_cuda_out_without_host_copies():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("skipped: no device for torch")
    rng = np.random.default_rng()
    cpu = sc.EmbeddingCollection(TABLES, 4)
    dev = sc_cuda.DeviceEmbeddingCollection(TABLES, 4)
    batch = {n: random_batch(rng, 9, 5, 30, weighted=i == 1) for i, n in enumerate(TABLES)}
    on_gpu = {n: tuple(torch.from_numpy(a).cuda() for a in g) for n, g in batch.items()}
    prepared = dev.prepare(on_gpu)
    assert prepared.space == "device"
    want, got = cpu.forward(batch), dev.forward(prepared)
    grads, gpu_grads = {}, {}
    for n in TABLES:
        w, g = (want[n][0], got[n][0]) if isinstance(want[n], tuple) else (want[n], got[n])
        assert isinstance(g, torch.Tensor) and g.device.type == "cuda"
        np.testing.assert_allclose(g.cpu().numpy(), w, rtol=2e-5, atol=2e-6)
        grads[n] = rng.standard_normal(w.shape).astype(np.float32)
        gpu_grads[n] = torch.from_numpy(grads[n]).cuda()
    assert dev.backward(prepared, gpu_grads) == cpu.backward(batch, grads)
    ids = torch.from_numpy(batch["sum"][0]).cuda()
    out = dev.lookup("sum", ids)
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out.cpu().numpy(), cpu.lookup("sum", batch["sum"][0]), rtol=2e-5, atol=2e-6)


@needs_device
def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy")
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=4)}, 2)
    cpu = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4)}, 2)
    ids, offsets = np.array([3, 9, 3], np.int64), np.array([0, 1, 3], np.int64)
    out = dev.forward({"t": (cupy.asarray(ids), cupy.asarray(offsets))})
    assert isinstance(out["t"], cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(out["t"]), cpu.forward({"t": (ids, offsets)})["t"], rtol=2e-5, atol=2e-6)


@needs_device
def test_host_memory_posing_as_device_memory_is_refused_on_a_device():
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=4)}, 2)
    with pytest.raises(ValueError, match="not CUDA device memory"):
        dev.lookup("t", FakeCudaArray(np.array([1, 2], np.int64)))


def test_misaligned_device_gradients_take_the_scalar_path():
    rng = np.random.default_rng()
    tables = {"t": sc.TableConfig(dim=8, optimizer=sc.Adagrad(lr=0.1))}
    host, dev = emulated(tables, 6), emulated(tables, 6)
    batch = {"t": random_batch(rng, 5, 4, 10, weighted=False)}
    host.forward(batch)
    prepared = dev.prepare({"t": fake(batch["t"])})
    grad = rng.standard_normal((5, 8)).astype(np.float32)
    storage = np.empty(grad.size + 1, np.float32)
    shifted = storage[1:].reshape(grad.shape)  # 4 bytes past a 16-byte boundary
    shifted[...] = grad
    assert shifted.ctypes.data % 16 != 0
    assert dev.backward(prepared, {"t": FakeCudaArray(shifted)}) == host.backward(batch, {"t": grad})
    np.testing.assert_array_equal(dev.export("t")["weights"], host.export("t")["weights"])
