"""Device affinity and the bounded memory cache through Python (under the emulator, which
has devices 0..7): a collection remembers its device, takes every spelling of one, refuses
bad ones, and each device's cache reports its use and stays within its limit."""

from __future__ import annotations

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda as sc_cuda


def tables():
    return {"t": sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.1))}


@pytest.mark.parametrize("spelling,expected", [("cuda:2", "cuda:2"), (4, "cuda:4"), ("cuda", "cuda:0")])
def test_a_collection_remembers_its_device(spelling, expected):
    emb = sc_cuda.DeviceEmbeddingCollection(tables(), 1, emulate=True, device=spelling)
    assert emb.device == expected
    assert expected in repr(emb)


def test_torch_devices_are_understood():
    torch = pytest.importorskip("torch")
    emb = sc_cuda.DeviceEmbeddingCollection(tables(), 1, emulate=True, device=torch.device("cuda", 3))
    assert emb.device == "cuda:3"
    with pytest.raises(ValueError, match="CUDA device"):
        sc_cuda.DeviceEmbeddingCollection(tables(), 1, emulate=True, device=torch.device("cpu"))


@pytest.mark.parametrize("bad,error,message", [
    ("cpu", ValueError, "'cuda' or 'cuda:N'"),
    ("cuda:x", ValueError, "'cuda' or 'cuda:N'"),
    (-1, ValueError, ">= 0"),
    (8, ValueError, "out of range"),
    (True, TypeError, "bool"),
    (1.5, TypeError, "float"),
])
def test_bad_devices_are_refused(bad, error, message):
    with pytest.raises(error, match=message):
        sc_cuda.DeviceEmbeddingCollection(tables(), 1, emulate=True, device=bad)


def test_checkpoints_load_onto_the_named_device(tmp_path):
    emb = sc_cuda.DeviceEmbeddingCollection(tables(), 1, emulate=True, device="cuda:1")
    emb.lookup("t", np.arange(10, dtype=np.int64), insert=True)
    emb.save(tmp_path / "ckpt")
    loaded = sc_cuda.DeviceEmbeddingCollection.load(tmp_path / "ckpt", emulate=True, device="cuda:2")
    assert loaded.device == "cuda:2"
    np.testing.assert_array_equal(loaded.lookup("t", np.arange(10, dtype=np.int64)),
                                  emb.lookup("t", np.arange(10, dtype=np.int64)))
    assert sc_cuda.DeviceEmbeddingCollection.from_host(emb.to_host(), emulate=True, device=3).device == "cuda:3"


def test_memory_cache_reports_use_and_honours_its_limit():
    device = 7
    sc_cuda.set_memory_cache_limit(4096, device, emulate=True)
    try:
        emb = sc_cuda.DeviceEmbeddingCollection(tables(), 1, emulate=True, device=device)
        rng = np.random.default_rng(0)
        for _ in range(3):
            ids = rng.integers(0, 10_000, size=500).astype(np.int64)
            offsets = np.arange(0, 501, 5, dtype=np.int64)
            emb.backward(emb.prepare({"t": (ids, offsets)}), {"t": np.ones((100, 3), np.float32)})
        s = sc_cuda.memory_cache_stats(device, emulate=True)
        assert set(s) == {"limit_bytes", "cached_bytes", "in_use_bytes", "hits", "misses", "released_over_limit"}
        assert s["limit_bytes"] == 4096
        assert s["cached_bytes"] <= 4096
        assert s["released_over_limit"] > 0  # the per-batch scratch did not fit
        assert s["in_use_bytes"] >= emb.memory_bytes() // 2  # the tables themselves
        sc_cuda.empty_memory_cache(device, emulate=True)
        assert sc_cuda.memory_cache_stats(device, emulate=True)["cached_bytes"] == 0
        with pytest.raises(ValueError, match=">= 0"):
            sc_cuda.set_memory_cache_limit(-1, device, emulate=True)
    finally:
        sc_cuda.set_memory_cache_limit(1 << 30, device, emulate=True)
