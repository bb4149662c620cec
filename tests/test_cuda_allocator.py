"""Device buffers from an external allocator (``sparsecore.cuda.set_allocator``; PyTorch's
caching allocator through ``use_torch_allocator``) instead of the bounded memory cache: every
block comes from the allocator and goes back to it, the cache keeps nothing meanwhile, the
results are the CPU engine's, and unsetting it brings the cache back. Under the emulator
device memory is host memory, so a NumPy-backed allocator stands in for torch's."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda

DEVICE = "cuda:5"  # an emulated device no other test uses: its cache starts empty


class HostBlocks:
    """allocate / free over NumPy buffers, 256-byte aligned, with counts."""

    def __init__(self):
        self.live, self.allocated, self.freed, self.streams = {}, 0, 0, set()

    def allocate(self, nbytes, device, stream):
        assert device == 5 and nbytes > 0
        buf = np.empty(nbytes + 256, np.uint8)
        address = (buf.ctypes.data + 255) // 256 * 256
        self.live[address] = buf
        self.allocated += 1
        self.streams.add(stream)
        return address

    def free(self, address):
        del self.live[address]
        self.freed += 1


def _train(dev, cpu, rng):
    for _ in range(3):
        ids = rng.integers(-50, 50, 120).astype(np.int64)
        batch = {"t": (ids, np.arange(0, 121, 4, dtype=np.int64))}
        want = cpu.forward(batch)
        np.testing.assert_array_equal(dev.forward(batch)["t"], want["t"])
        grads = {"t": rng.standard_normal(want["t"].shape).astype(np.float32)}
        dev.backward(batch, grads)
        cpu.backward(batch, grads)
    probe = np.arange(-60, 60, dtype=np.int64)
    np.testing.assert_array_equal(dev.lookup("t", probe), cpu.lookup("t", probe))


def test_an_external_allocator_serves_every_device_buffer_and_gets_each_back():
    tables = {"t": sc.TableConfig(dim=6, optimizer=sc.Adagrad(lr=0.1))}
    blocks = HostBlocks()
    sc_cuda.empty_memory_cache(DEVICE, emulate=True)
    sc_cuda.set_allocator(blocks.allocate, blocks.free, DEVICE, emulate=True)
    try:
        dev = sc_cuda.DeviceEmbeddingCollection(tables, 3, emulate=True, device=DEVICE)
        _train(dev, sc.EmbeddingCollection(tables, 3), np.random.default_rng(1))
        assert blocks.allocated > 10 and blocks.live
        stats = sc_cuda.memory_cache_stats(DEVICE, emulate=True)
        assert stats["cached_bytes"] == 0 and stats["hits"] == 0 and stats["in_use_bytes"] > 0
        del dev
        gc.collect()
        assert not blocks.live and blocks.freed == blocks.allocated
        assert sc_cuda.memory_cache_stats(DEVICE, emulate=True)["in_use_bytes"] == 0
    finally:
        sc_cuda.set_allocator(None, None, DEVICE, emulate=True)
    # Back to the memory cache: the allocator is not called again.
    before = blocks.allocated
    dev = sc_cuda.DeviceEmbeddingCollection(tables, 3, emulate=True, device=DEVICE)
    _train(dev, sc.EmbeddingCollection(tables, 3), np.random.default_rng(1))
    assert blocks.allocated == before
    assert sc_cuda.memory_cache_stats(DEVICE, emulate=True)["misses"] > 0


def test_an_allocator_that_fails_fails_the_call_and_bad_arguments_are_refused():
    def refuse(nbytes, device, stream):
        raise MemoryError(f"no {nbytes} bytes")

    with pytest.raises(TypeError, match="callables"):
        sc_cuda.set_allocator(refuse, None, DEVICE, emulate=True)
    sc_cuda.set_allocator(refuse, lambda address: None, DEVICE, emulate=True)
    try:
        with pytest.raises(MemoryError, match="bytes"):
            sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=4)}, 1, emulate=True, device=DEVICE)
    finally:
        sc_cuda.set_allocator(None, None, DEVICE, emulate=True)
    dev = sc_cuda.DeviceEmbeddingCollection({"t": sc.TableConfig(dim=4)}, 1, emulate=True, device=DEVICE)
    assert dev.lookup("t", np.arange(3, dtype=np.int64), insert=True).shape == (3, 4)


@pytest.mark.skipif(sc_cuda.is_available(), reason="a device is present")
def test_the_torch_allocator_needs_a_device():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch has a CUDA device")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        sc_cuda.use_torch_allocator(0)


@pytest.mark.skipif(not sc_cuda.is_available(), reason="skipped: no device")
def test_the_torch_allocator_serves_a_device_collection():
    torch = pytest.importorskip("torch")
    tables = {"t": sc.TableConfig(dim=8, optimizer=sc.Adagrad(lr=0.1))}
    sc_cuda.use_torch_allocator(0)
    try:
        before = torch.cuda.memory_stats(0).get("allocation.all.allocated", 0)
        dev = sc_cuda.DeviceEmbeddingCollection(tables, 3)
        _train(dev, sc.EmbeddingCollection(tables, 3), np.random.default_rng(2))
        assert torch.cuda.memory_stats(0)["allocation.all.allocated"] > before
        assert sc_cuda.memory_cache_stats(0)["cached_bytes"] == 0
        del dev
    finally:
        sc_cuda.set_allocator(None, None, 0)
